//! The generator's activity as providers log it: each generated event written as a raw record of
//! AWS CloudTrail, Okta, Google Workspace or Entra ID sign-in logs, shaped like the real records
//! in `tests/data` (the same field names and nesting), so that `threatflow run --format
//! aws.cloudtrail` runs the path users run (parse, mapping, Sigma rules on the provider's own
//! fields) with ground truth and no file to prepare.
//!
//! A provider logs what it sees. CloudTrail and Google Workspace see every action: console
//! sign-ins, S3 object calls (`GetObject` with the bytes sent, `DeleteObject`, `PutBucketAcl`…)
//! and IAM calls (`AttachUserPolicy`, `CreateAccessKey`, `CreateUser`); Drive, Gmail and admin
//! activity. An identity provider sees sign-ins: there a sign-in is `user.session.start` (Okta) or
//! an interactive sign-in (Entra ID), an action in an app is the single sign-on to that app it
//! implies (`user.authentication.sso`, a non-interactive sign-in), and Okta's own events stand for
//! permission and admin changes (`user.account.privilege.grant`, `user.lifecycle.create`).
//!
//! The mixed rendering writes each user's records with one provider, chosen by the user: every
//! source at once, with each user's activity under one identity. (Splitting a user's sign-ins
//! and work across an identity provider and a workload would split them into two users, an
//! email address and an AWS ARN, which nothing joins yet: their features would be wrong.)
//!
//! The event id travels in the provider's id field (CloudTrail `eventID`, Okta `uuid`, Google
//! `id.uniqueQualifier`, Entra `correlationId`), so ground truth still names the events.
//!
//! ```
//! use threatflow::event::parse_event;
//! use threatflow::ingest::mapping::RecordFormat;
//! use threatflow::ingest::provider_records::Provider;
//!
//! let event = parse_event(br#"{"event_id":"e1","ts":1767600000000,"user":"ann@example.com","action":"download","resource":"drive/7/doc3","bytes":5000000,"src_ip":"203.0.113.9"}"#, 1 << 20)?;
//! let record = Provider::CloudTrail.render(&event);
//! assert_eq!(record["eventName"], "GetObject");
//! assert_eq!(record["additionalEventData"]["bytesTransferredOut"], 5000000);
//! // The shipped mapping reads it back, as it reads a file's line.
//! let mut decoded = Vec::new();
//! RecordFormat::parse("aws.cloudtrail", None)?.decode(sonic_rs::from_str(&record.to_string())?, &mut decoded);
//! let mapped = decoded.remove(0).0?;
//! assert_eq!((mapped.event_id.as_str(), mapped.action.as_str(), mapped.bytes), ("e1", "download", Some(5_000_000)));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use anyhow::{bail, Result};
use serde_json::{json, Value};

use crate::event::{Event, Time};
use crate::ingest::mapping::RecordFormat;

/// A provider whose records the generator writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    /// AWS CloudTrail (console sign-ins, S3 data events, IAM calls).
    CloudTrail,
    /// Okta System Log.
    Okta,
    /// Google Workspace audit activities (Admin SDK Reports).
    GoogleWorkspace,
    /// Entra ID (Azure AD) sign-in logs, diagnostic-settings shape.
    EntraSignIn,
}

impl Provider {
    /// Every provider.
    pub const ALL: [Provider; 4] = [Provider::CloudTrail, Provider::Okta, Provider::GoogleWorkspace, Provider::EntraSignIn];

    /// The name of the shipped mapping that reads its records.
    pub fn mapping(self) -> &'static str {
        match self {
            Provider::CloudTrail => "aws.cloudtrail",
            Provider::Okta => "okta.okta",
            Provider::GoogleWorkspace => "gcp.google_workspace",
            Provider::EntraSignIn => "azure.signinlogs",
        }
    }

    /// The provider's record of an event.
    pub fn render(self, event: &Event) -> Value {
        match self {
            Provider::CloudTrail => cloudtrail(event),
            Provider::Okta => okta(event),
            Provider::GoogleWorkspace => google_workspace(event),
            Provider::EntraSignIn => entra_sign_in(event),
        }
    }
}

/// How the generator writes its events for a record format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rendering {
    /// Every event as one provider's record.
    One(Provider),
    /// Each user's records from one provider, chosen by the user.
    Mixed,
}

impl Rendering {
    /// The rendering for a job's record format: none for canonical events, mixed for `auto`, one
    /// provider for its mapping's name; an error for a mapping the generator cannot write.
    pub fn for_format(format: &RecordFormat) -> Result<Option<Rendering>> {
        let name = format.name();
        if name == "canonical" {
            return Ok(None);
        }
        if name == "auto" {
            return Ok(Some(Rendering::Mixed));
        }
        match Provider::ALL.into_iter().find(|p| p.mapping() == name) {
            Some(provider) => Ok(Some(Rendering::One(provider))),
            None => {
                let names: Vec<&str> = Provider::ALL.iter().map(|p| p.mapping()).collect();
                bail!("the generator writes canonical events, auto (mixed providers) or {}, not {name}", names.join(", "))
            }
        }
    }

    /// The provider that logs an event.
    pub fn provider(self, event: &Event) -> Provider {
        match self {
            Rendering::One(provider) => provider,
            Rendering::Mixed => Provider::ALL[(hash(&event.user) % Provider::ALL.len() as u64) as usize],
        }
    }

    /// The record of an event, as JSON text.
    pub fn render(self, event: &Event) -> String {
        // (sonic-rs writes the same text as `serde_json`, in a third of the time.)
        let record = self.provider(event).render(event);
        sonic_rs::to_string(&record).unwrap_or_else(|_| record.to_string())
    }
}

/// A stable hash of a text (choices that must not depend on anything but the event).
fn hash(text: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(text.as_bytes())
}

/// RFC 3339 in UTC, with milliseconds or (CloudTrail) whole seconds.
fn iso(ts: Time, millis: bool) -> String {
    use chrono::{Datelike, Timelike};
    let t = chrono::DateTime::from_timestamp_millis(i64::try_from(ts).unwrap_or(i64::MAX)).unwrap_or_default();
    // (Written field by field: a `strftime` pattern is parsed again for every record.)
    let (date, time) = ((t.year(), t.month(), t.day()), (t.hour(), t.minute(), t.second()));
    let whole = format!("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}", date.0, date.1, date.2, time.0, time.1, time.2);
    match millis {
        true => format!("{whole}.{:03}Z", t.timestamp_subsec_millis()),
        false => whole + "Z",
    }
}

/// An event's optional text field, or a default.
fn text<'e>(value: &'e Option<crate::event::Text>, default: &'e str) -> &'e str {
    value.as_deref().unwrap_or(default)
}

/// A generated resource (`drive/TEAM_OR_USER/docN`, `admin/roleN`) as its container and item.
fn split_resource(resource: Option<&str>) -> (&str, &str) {
    let resource = resource.unwrap_or("drive/shared/doc0");
    match resource.rsplit_once('/') {
        Some((container, item)) => (container, item),
        None => ("drive", resource),
    }
}

/// The account the generated AWS activity happens in.
const ACCOUNT: &str = "123456789012";

fn cloudtrail(event: &Event) -> Value {
    let user = event.user.as_str();
    let (container, item) = split_resource(event.resource.as_deref());
    let bucket = format!("acme-{}", container.replace('/', "-"));
    let object_arn = format!("arn:aws:s3:::{bucket}/{item}");
    let variant = hash(&event.event_id) % 2;
    // (event source, event name, request parameters, response elements, data event)
    let (source, name, request, response, data) = match event.action.as_str() {
        "login" => ("signin.amazonaws.com", "ConsoleLogin", Value::Null, json!({"ConsoleLogin": "Success"}), false),
        "login_failed" => ("signin.amazonaws.com", "ConsoleLogin", Value::Null, json!({"ConsoleLogin": "Failure"}), false),
        "view" => ("s3.amazonaws.com", "HeadObject", json!({"bucketName": bucket, "key": item}), Value::Null, true),
        "download" => ("s3.amazonaws.com", "GetObject", json!({"bucketName": bucket, "key": item}), Value::Null, true),
        "edit" | "upload" => ("s3.amazonaws.com", "PutObject", json!({"bucketName": bucket, "key": item}), Value::Null, true),
        // Copying an object into the team's bucket is how S3 users share inside the company.
        "share_internal" => ("s3.amazonaws.com", "CopyObject", json!({"bucketName": "acme-shared", "key": item, "x-amz-copy-source": format!("{bucket}/{item}")}), Value::Null, true),
        "delete" => ("s3.amazonaws.com", "DeleteObject", json!({"bucketName": bucket, "key": item}), Value::Null, true),
        "send_mail" => ("ses.amazonaws.com", "SendEmail", Value::Null, Value::Null, false),
        "share_external" if variant == 0 => (
            "s3.amazonaws.com",
            "PutBucketAcl",
            json!({"host": [format!("{bucket}.s3.us-east-1.amazonaws.com")], "bucketName": bucket, "acl": [""], "x-amz-acl": ["public-read"]}),
            Value::Null,
            false,
        ),
        "share_external" => (
            "s3.amazonaws.com",
            "PutBucketPolicy",
            json!({"bucketName": bucket, "bucketPolicy": {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": format!("arn:aws:s3:::{bucket}/*")}]}}),
            Value::Null,
            false,
        ),
        "permission_change" if variant == 0 => (
            "iam.amazonaws.com",
            "AttachUserPolicy",
            json!({"userName": user, "policyArn": "arn:aws:iam::aws:policy/AdministratorAccess"}),
            Value::Null,
            false,
        ),
        "permission_change" => ("iam.amazonaws.com", "CreateAccessKey", json!({"userName": user}), json!({"accessKey": {"userName": user, "status": "Active"}}), false),
        "admin_action" if variant == 0 => ("iam.amazonaws.com", "CreateUser", json!({"userName": format!("svc-{item}")}), json!({"user": {"userName": format!("svc-{item}")}}), false),
        "admin_action" => ("iam.amazonaws.com", "CreateRole", json!({"roleName": item}), json!({"role": {"roleName": item}}), false),
        other => ("s3.amazonaws.com", other, json!({"bucketName": bucket, "key": item}), Value::Null, true),
    };
    let console = source == "signin.amazonaws.com";
    let mut record = json!({
        "eventVersion": "1.08",
        "userIdentity": {
            "type": "IAMUser",
            "principalId": format!("AIDA{:016X}", hash(user)),
            "arn": format!("arn:aws:iam::{ACCOUNT}:user/{user}"),
            "accountId": ACCOUNT,
            "userName": user,
        },
        "eventTime": iso(event.ts, false),
        "eventSource": source,
        "eventName": name,
        "awsRegion": "us-east-1",
        "sourceIPAddress": text(&event.src_ip, "AWS Internal"),
        "userAgent": text(&event.user_agent, "aws-cli/2.15.0"),
        "requestParameters": request,
        "responseElements": response,
        "requestID": format!("{:016X}", hash(&event.event_id)),
        "eventID": event.event_id.as_str(),
        "readOnly": matches!(name, "HeadObject" | "GetObject"),
        "eventType": if console { "AwsConsoleSignIn" } else { "AwsApiCall" },
        "managementEvent": !data,
        "recipientAccountId": ACCOUNT,
        "eventCategory": if data { "Data" } else { "Management" },
        "tlsDetails": {"tlsVersion": "TLSv1.3", "cipherSuite": "TLS_AES_128_GCM_SHA256", "clientProvidedHostHeader": source.replace(".amazonaws.com", ".us-east-1.amazonaws.com")},
    });
    if console {
        // One user in five signs in without MFA (SigmaHQ has a rule for it).
        let mfa = if hash(user).is_multiple_of(5) { "No" } else { "Yes" };
        record["additionalEventData"] = json!({"LoginTo": "https://console.aws.amazon.com/console/home", "MobileVersion": "No", "MFAUsed": mfa});
        if event.action == "login_failed" {
            record["errorMessage"] = json!("Failed authentication");
        }
    }
    if data {
        record["resources"] = json!([
            {"type": "AWS::S3::Object", "ARN": object_arn},
            {"accountId": ACCOUNT, "type": "AWS::S3::Bucket", "ARN": format!("arn:aws:s3:::{bucket}")},
        ]);
        let bytes = event.bytes.unwrap_or(0);
        let (bytes_in, bytes_out) = if name == "GetObject" { (0, bytes) } else { (bytes, 0) };
        record["additionalEventData"] = json!({"bytesTransferredIn": bytes_in, "bytesTransferredOut": bytes_out, "x-amz-id-2": format!("{:016x}", hash(item))});
    }
    record
}

/// A country code's name (as Okta writes it).
fn country_name(code: &str) -> &str {
    const NAMES: [(&str, &str); 26] = [
        ("US", "United States"), ("CA", "Canada"), ("BR", "Brazil"), ("MX", "Mexico"), ("GB", "United Kingdom"),
        ("DE", "Germany"), ("FR", "France"), ("NL", "Netherlands"), ("ES", "Spain"), ("IT", "Italy"),
        ("SE", "Sweden"), ("PL", "Poland"), ("IN", "India"), ("SG", "Singapore"), ("JP", "Japan"),
        ("AU", "Australia"), ("ZA", "South Africa"), ("NG", "Nigeria"), ("KR", "South Korea"), ("AR", "Argentina"),
        ("RU", "Russia"), ("KP", "North Korea"), ("IR", "Iran"), ("VN", "Vietnam"), ("RO", "Romania"), ("UA", "Ukraine"),
    ];
    NAMES.iter().find(|(c, _)| *c == code).map_or(code, |(_, name)| name)
}

/// The app an in-app action happens in, as an identity provider names it.
fn app_name(event: &Event) -> &'static str {
    match event.app.as_deref() {
        Some("mail") => "Office 365 Exchange Online",
        Some("admin") => "Admin Console",
        _ => "Google Drive",
    }
}

fn okta(event: &Event) -> Value {
    let user = event.user.as_str();
    let actor_id = format!("00u{:017x}", hash(user) >> 4);
    let app_target = || json!([{"id": format!("0oa{:017x}", hash(app_name(event)) >> 4), "type": "AppInstance", "alternateId": app_name(event), "displayName": app_name(event), "detailEntry": {"signOnModeType": "SAML_2_0"}}]);
    let user_target = || json!([{"id": actor_id, "type": "User", "alternateId": user, "displayName": user}]);
    // (event type, legacy type, message, outcome, reason, targets)
    let (event_type, legacy, message, result, reason, target) = match event.action.as_str() {
        "login" => ("user.session.start", "core.user_auth.login_success", "User login to Okta", "SUCCESS", Value::Null, Value::Null),
        "login_failed" => ("user.session.start", "core.user_auth.login_failed", "User login to Okta", "FAILURE", json!("INVALID_CREDENTIALS"), Value::Null),
        "permission_change" => ("user.account.privilege.grant", "core.user.admin_privilege.granted", "Grant user privilege", "SUCCESS", Value::Null, user_target()),
        "admin_action" => ("user.lifecycle.create", "core.user.config.user_creation.success", "Create Okta user", "SUCCESS", Value::Null, user_target()),
        _ => ("user.authentication.sso", "app.auth.sso", "User single sign on to app", "SUCCESS", Value::Null, app_target()),
    };
    let country = country_name(text(&event.country, ""));
    let ip = text(&event.src_ip, "0.0.0.0");
    let agent = text(&event.user_agent, "");
    json!({
        "uuid": event.event_id.as_str(),
        "published": iso(event.ts, true),
        "eventType": event_type,
        "version": "0",
        "severity": "INFO",
        "legacyEventType": legacy,
        "displayMessage": message,
        "actor": {"id": actor_id, "type": "User", "alternateId": user, "displayName": user},
        "client": {
            "userAgent": {"rawUserAgent": agent, "os": "Unknown", "browser": "UNKNOWN"},
            "zone": "null",
            "device": "Computer",
            "ipAddress": ip,
            "geographicalContext": {"country": country},
        },
        "outcome": {"result": result, "reason": reason},
        "target": target,
        "transaction": {"type": "WEB", "id": format!("{:016x}", hash(&event.event_id))},
        "authenticationContext": {"authenticationStep": 0, "externalSessionId": format!("102{:016x}", hash(user) ^ (event.ts / 3_600_000))},
        "request": {"ipChain": [{"ip": ip, "geographicalContext": {"country": country}, "version": "V4"}]},
        "debugContext": {"debugData": {"requestId": format!("{:016x}", hash(&event.event_id))}},
    })
}

fn google_workspace(event: &Event) -> Value {
    let user = event.user.as_str();
    let (container, item) = split_resource(event.resource.as_deref());
    let doc = |visibility: &str| json!({"primary_event": true, "billable": true, "doc_id": format!("{:x}", hash(event.resource.as_deref().unwrap_or(""))), "doc_title": format!("{container}/{item}"), "doc_type": "document", "owner": user, "visibility": visibility});
    // (application, type, name, parameters)
    let (application, kind, name, parameters) = match event.action.as_str() {
        "login" => ("login", "login", "login_success", json!({"login_type": "google_password", "login_challenge_method": ["password"], "is_suspicious": null})),
        "login_failed" => ("login", "login", "login_failure", json!({"login_type": "google_password", "login_challenge_method": ["password"], "is_suspicious": null})),
        "view" => ("drive", "access", "view", doc("private")),
        "edit" => ("drive", "access", "edit", doc("private")),
        "download" => ("drive", "access", "download", doc("shared_internally")),
        "upload" => ("drive", "access", "upload", doc("private")),
        "delete" => ("drive", "access", "delete", doc("private")),
        "share_internal" => {
            let mut parameters = doc("shared_internally");
            parameters["target_user"] = json!(format!("colleague{}@example.com", hash(item) % 100));
            parameters["visibility_change"] = json!("internal");
            ("drive", "acl_change", "change_user_access", parameters)
        }
        "share_external" => {
            let mut parameters = doc("shared_externally");
            parameters["target_user"] = json!(format!("partner{}@gmail.com", hash(item) % 100));
            parameters["visibility_change"] = json!("external");
            parameters["old_visibility"] = json!("private");
            parameters["new_value"] = json!(["can_view"]);
            ("drive", "acl_change", "change_user_access", parameters)
        }
        "send_mail" => ("gmail", "message", "send", json!({"message_info": {"subject": "", "source": {"address": user}, "action_type": 10}})),
        "permission_change" => ("admin", "DELEGATED_ADMIN_SETTINGS", "ASSIGN_ROLE", json!({"ROLE_NAME": item, "USER_EMAIL": user})),
        "admin_action" => ("admin", "USER_SETTINGS", "CREATE_USER", json!({"USER_EMAIL": format!("{item}@example.com")})),
        other => ("drive", "access", other, doc("private")),
    };
    let mut record = json!({
        "kind": "admin#reports#activity",
        "id": {"time": iso(event.ts, true), "uniqueQualifier": event.event_id.as_str(), "applicationName": application, "customerId": "C03az79cb"},
        "actor": {"callerType": "USER", "email": user, "profileId": format!("1{:020}", hash(user))},
        "ipAddress": text(&event.src_ip, ""),
        "type": kind,
        "name": name,
        "parameters": parameters,
    });
    if application == "admin" {
        record["ownerDomain"] = json!("example.com");
    }
    record
}

fn entra_sign_in(event: &Event) -> Value {
    let user = event.user.as_str();
    let failed = event.action == "login_failed";
    let interactive = matches!(event.action.as_str(), "login" | "login_failed");
    let (app, resource) = match event.action.as_str() {
        "login" | "login_failed" => ("Microsoft Office", "Microsoft Graph"),
        "permission_change" | "admin_action" => ("Azure Portal", "Windows Azure Service Management API"),
        "send_mail" => ("Outlook", "Office 365 Exchange Online"),
        _ => ("SharePoint Online Web Client Extensibility", "Office 365 SharePoint Online"),
    };
    let (code, reason) = if failed { (50126, "Error validating credentials due to invalid username or password.") } else { (0, "Other.") };
    let time = iso(event.ts, true);
    let ip = text(&event.src_ip, "");
    json!({
        "time": time,
        "resourceId": "/tenants/4f1c2d3e-0000-4000-8000-000000000001/providers/Microsoft.aadiam",
        "operationName": "Sign-in activity",
        "operationVersion": "1.0",
        "category": if interactive { "SignInLogs" } else { "NonInteractiveUserSignInLogs" },
        "tenantId": "4f1c2d3e-0000-4000-8000-000000000001",
        "resultType": code.to_string(),
        "resultSignature": if failed { "FAILURE" } else { "SUCCESS" },
        "durationMs": 0,
        "callerIpAddress": ip,
        "correlationId": event.event_id.as_str(),
        "Level": "4",
        "location": text(&event.country, ""),
        "properties": {
            "createdDateTime": time,
            "userPrincipalName": user,
            "userId": format!("{:032x}", u128::from(hash(user))),
            "appDisplayName": app,
            "appId": format!("{:032x}", u128::from(hash(app))),
            "resourceDisplayName": resource,
            "ipAddress": ip,
            "clientAppUsed": "Browser",
            "userAgent": text(&event.user_agent, ""),
            "isInteractive": interactive,
            "authenticationRequirement": if interactive { "multiFactorAuthentication" } else { "singleFactorAuthentication" },
            "conditionalAccessStatus": "notApplied",
            "status": {"errorCode": code, "failureReason": reason},
            "location": {"countryOrRegion": text(&event.country, ""), "city": "", "state": ""},
            "deviceDetail": {"browser": "Chrome", "operatingSystem": "Windows10", "deviceId": ""},
            "riskLevelDuringSignIn": "none",
            "riskState": "none",
            "correlationId": event.event_id.as_str(),
        },
    })
}
