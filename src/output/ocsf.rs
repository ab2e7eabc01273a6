//! Alerts as OCSF Detection Findings (class 2004, schema 1.8.0), for security data lakes and SIEMs
//! that read the Open Cybersecurity Schema Framework (`--alerts-format ocsf`).
//!
//! A finding names the decision (`finding_info.uid` and `metadata.uid`: the `decision_id`), what
//! flagged it (`finding_info.analytic`: the first rule, the model, the marked threat or the
//! indicator; the other rules in `related_analytics`), its severity, the user and the source
//! endpoint with its enrichment (`evidences[0]`: `actor.user`, `src_endpoint` with `location`
//! and `autonomous_system`, and `data` with the event's id and where it was read), observables
//! for the user and the address, and what OCSF has no place for in `unmapped`: the verdict, the
//! model's score, version and per-feature contributions, the features, correlation groups,
//! blocks and threat-intel hits. Fields without a value are left out, as the schema wants.
//!
//! ```
//! use threatflow::output::ocsf::finding;
//! use threatflow::output::Alert;
//!
//! let alert: Alert = serde_json::from_value(serde_json::json!({
//!     "decision_id": "d1", "event_id": "e1", "user": "ana", "ts": 1_700_000_000_000u64, "verdict": "threat",
//!     "score": 0.93, "model_version": "m1", "severity": "high", "rules": ["r1"], "rule_titles": ["Console login without MFA"],
//!     "fingerprint_match": null, "features": threatflow::state::features::Features::default(), "contributions": [],
//!     "correlation_groups": [], "blocked_until": null,
//!     "src_ip": "203.0.113.7"
//! }))?;
//! let finding = finding(&alert, None, None);
//! assert_eq!((finding["class_uid"].as_u64(), finding["type_uid"].as_u64(), finding["severity_id"].as_u64()), (Some(2004), Some(200401), Some(4)));
//! assert_eq!(finding["finding_info"]["uid"], "d1");
//! assert_eq!(finding["finding_info"]["title"], "Console login without MFA");
//! assert_eq!(finding["evidences"][0]["src_endpoint"]["ip"], "203.0.113.7");
//! assert_eq!(finding["unmapped"]["score"], 0.93);
//! # Ok::<(), serde_json::Error>(())
//! ```

use serde_json::{json, Map, Value};

use crate::detect::action::Severity;
use crate::enrich::Enrichment;
use crate::event::Position;
use crate::output::Alert;

/// The OCSF schema version the findings follow.
pub const OCSF_VERSION: &str = "1.8.0";

/// The Detection Finding of `alert`, with where its event was read and its enrichment.
pub fn finding(alert: &Alert, position: Option<&Position>, enrichment: Option<&Enrichment>) -> Value {
    let (severity_id, severity) = match alert.severity {
        Severity::Informational => (1, "Informational"),
        Severity::Low => (2, "Low"),
        Severity::Medium => (3, "Medium"),
        Severity::High => (4, "High"),
        Severity::Critical => (5, "Critical"),
    };
    let analytics = analytics(alert);
    let title = analytics.first().and_then(|a| a["name"].as_str()).unwrap_or("threatflow decision").to_string();
    let mut finding_info = json!({
        "uid": alert.decision_id,
        "title": title,
        "types": [alert.verdict.as_str()],
        "created_time": alert.ts,
        "first_seen_time": alert.event_ts.unwrap_or(alert.ts),
        "last_seen_time": alert.event_ts.unwrap_or(alert.ts),
    });
    if let Some((first, rest)) = analytics.split_first() {
        finding_info["analytic"] = first.clone();
        if !rest.is_empty() {
            finding_info["related_analytics"] = rest.to_vec().into();
        }
    }
    let evidence = json!({
        "uid": alert.event_id,
        "actor": {"user": {"name": alert.user}},
        "src_endpoint": alert.src_ip.as_ref().map(|ip| endpoint(ip, enrichment)),
        "data": {"event_id": alert.event_id, "position": position, "event_ts": alert.event_ts.unwrap_or(alert.ts)},
    });
    let mut observables = vec![json!({"name": "evidences[0].actor.user.name", "type_id": 4, "type": "User Name", "value": alert.user})];
    if let Some(ip) = alert.src_ip.as_ref().filter(|ip| is_address(ip)) {
        observables.push(json!({"name": "evidences[0].src_endpoint.ip", "type_id": 2, "type": "IP Address", "value": ip}));
    }
    let unmapped = json!({
        "verdict": alert.verdict.as_str(),
        "score": alert.score,
        "model_version": alert.model_version,
        "contributions": alert.contributions,
        "features": alert.features,
        "correlation_groups": alert.correlation_groups,
        "fingerprint_match": alert.fingerprint_match,
        "blocked_until": alert.blocked_until,
        "intel": alert.intel,
        "enrichment": enrichment,
        "risk": alert.risk,
    });
    let mut finding = json!({
        "activity_id": 1,
        "activity_name": "Create",
        "category_uid": 2,
        "category_name": "Findings",
        "class_uid": 2004,
        "class_name": "Detection Finding",
        "type_uid": 200401,
        "type_name": "Detection Finding: Create",
        "severity_id": severity_id,
        "severity": severity,
        "status_id": 1,
        "status": "New",
        "is_alert": true,
        "time": alert.ts,
        "message": format!("{title}: {} ({})", alert.user, alert.verdict.as_str()),
        "confidence_score": alert.score.map(|s| (s * 100.0).round() as i64),
        "metadata": {
            "version": OCSF_VERSION,
            "uid": alert.decision_id,
            "original_event_uid": alert.event_id,
            "log_name": "alerts",
            "product": {"name": "threatflow", "vendor_name": "threatflow", "version": env!("CARGO_PKG_VERSION")},
        },
        "finding_info": finding_info,
        "evidences": [evidence],
        "observables": observables,
        "unmapped": unmapped,
    });
    strip_empty(&mut finding);
    finding
}

/// What flagged the alert, as OCSF analytics: its rules (by title), the marked threat it
/// repeats, its threat-intel indicators, an entity's risk, the model.
fn analytics(alert: &Alert) -> Vec<Value> {
    let title = |i: usize| alert.rule_titles.get(i).filter(|t| !t.is_empty());
    let mut analytics: Vec<Value> = (alert.rules.iter().enumerate())
        .map(|(i, id)| json!({"uid": id, "name": title(i).unwrap_or(id), "type_id": 1, "type": "Rule"}))
        .collect();
    if let Some(mark) = &alert.fingerprint_match {
        analytics.push(json!({"uid": mark, "name": format!("Repeat of marked threat {mark}"), "type_id": 5, "type": "Fingerprinting"}));
    }
    for hit in alert.intel.iter().flatten() {
        analytics.push(json!({"uid": hit.indicator, "name": format!("Threat-intel indicator {} ({})", hit.value, hit.source), "type_id": 9, "type": "Exact Data Match"}));
    }
    if let Some(risk) = &alert.risk {
        let name = format!("Entity risk of {} {}: {} over {} detections", risk.entity, risk.value, risk.score, risk.contributions.len());
        analytics.push(json!({"uid": format!("risk:{}", risk.entity), "name": name, "type_id": 2, "type": "Behavioral"}));
    }
    if let Some(score) = alert.score.filter(|_| analytics.is_empty()) {
        let version = alert.model_version.as_deref().unwrap_or("model");
        analytics.push(json!({"uid": version, "name": format!("Model score {score:.2}"), "type_id": 4, "type": "Learning (ML/DL)", "version": version}));
    }
    analytics
}

/// Whether a source address, kept as the provider sent it, is an IP address (CloudTrail's is a
/// service name for calls AWS makes itself: `AWS Internal`, `ec2.amazonaws.com`).
fn is_address(text: &str) -> bool {
    text.parse::<std::net::IpAddr>().is_ok()
}

/// The source endpoint: the address (a name when it is not one), and where the enrichment
/// databases place it.
fn endpoint(ip: &str, enrichment: Option<&Enrichment>) -> Value {
    if !is_address(ip) {
        return json!({"name": ip});
    }
    let Some(e) = enrichment else { return json!({"ip": ip}) };
    json!({
        "ip": ip,
        "location": {"country": e.country, "city": e.city, "lat": e.latitude.map(|l| l.0), "long": e.longitude.map(|l| l.0)},
        "autonomous_system": {"number": e.asn, "name": e.as_org},
    })
}

/// Removes nulls, and the objects and arrays they leave empty (the schema refuses nulls and an
/// empty location).
fn strip_empty(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.values_mut().for_each(strip_empty);
            map.retain(|_, v| !(v.is_null() || v.as_object().is_some_and(Map::is_empty) || v.as_array().is_some_and(Vec::is_empty)));
        }
        Value::Array(items) => items.iter_mut().for_each(strip_empty),
        _ => {}
    }
}
