//! Job settings from a TOML file (`--config threatflow.toml`): every option of `run` and `replay`
//! can be set there, under its long name (`model_updates` or `model-updates`), and an option given
//! on the command line overrides the file's (a repeatable one replaces the file's list).
//!
//! The file is turned into the options it stands for, placed before the command line's, so that
//! clap parses and checks both the same way: a value the command line would refuse, the file's
//! is refused too, and `threatflow config check` prints what a job would run with.
//!
//! ```
//! use threatflow::cli::config::expand;
//! let toml = "workers = 2\nrules = [\"a.json\", \"b.json\"]\nallowed_lateness = \"10s\"\n";
//! let args = expand(&["threatflow", "replay", "--rules", "c.json"].map(Into::into), "replay", toml)?;
//! let args: Vec<String> = args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
//! // The command line's `--rules` replaces the file's list; the rest comes from the file.
//! assert_eq!(args, ["threatflow", "replay", "--allowed-lateness", "10s", "--workers", "2", "--rules", "c.json"]);
//! # Ok::<(), anyhow::Error>(())
//! ```

use std::ffi::OsString;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use clap::CommandFactory;

use super::Cli;

/// The subcommands a configuration file can serve.
pub const CONFIGURABLE: [&str; 2] = ["run", "replay"];

/// The command line with `--config FILE` (after `run` or `replay`) replaced by the options the
/// file sets; any other command line unchanged.
pub fn with_config_file(args: Vec<OsString>) -> Result<Vec<OsString>> {
    let Some(command) = args.get(1).and_then(|a| a.to_str()).filter(|c| CONFIGURABLE.contains(c)).map(str::to_string) else {
        return Ok(args);
    };
    let mut rest = Vec::with_capacity(args.len());
    let mut file = None;
    let mut iter = args.into_iter();
    while let Some(arg) = iter.next() {
        match arg.to_str() {
            Some("--config") => file = Some(iter.next().ok_or_else(|| anyhow!("--config needs a file"))?),
            Some(text) if text.starts_with("--config=") => file = Some(OsString::from(&text["--config=".len()..])),
            _ => rest.push(arg),
        }
    }
    let Some(file) = file else { return Ok(rest) };
    let path = Path::new(&file);
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the configuration {}", path.display()))?;
    expand(&rest, &command, &text).with_context(|| format!("in the configuration {}", path.display()))
}

/// `args` (a command line of `command`) with the options `toml` sets that the command line does
/// not, placed right after the subcommand.
pub fn expand(args: &[OsString], command: &str, toml: &str) -> Result<Vec<OsString>> {
    let table: toml::Table = toml.parse().context("not valid TOML")?;
    let cli = Cli::command();
    let sub = cli.find_subcommand(command).ok_or_else(|| anyhow!("no command {command}"))?;
    let given = |long: &str, short: Option<char>| {
        args.iter().filter_map(|a| a.to_str()).any(|a| {
            a.strip_prefix("--").is_some_and(|rest| rest == long || rest.starts_with(&format!("{long}=")))
                || short.is_some_and(|s| a.strip_prefix('-').is_some_and(|rest| !rest.starts_with('-') && rest.starts_with(s)))
        })
    };
    let mut from_file = Vec::new();
    for (key, value) in &table {
        let long = key.replace('_', "-");
        let arg = sub
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()) && a.get_id() != "help")
            .ok_or_else(|| anyhow!("unknown setting `{key}`: `threatflow {command} --help` lists the options (long names, `_` or `-`)"))?;
        if given(&long, arg.get_short()) {
            continue;
        }
        let flag = !arg.get_action().takes_values();
        for value in values(key, value)? {
            match (flag, value.as_str()) {
                (true, "true") => from_file.push(OsString::from(format!("--{long}"))),
                (true, "false") => {}
                (true, _) => bail!("`{key}` is a switch: true or false"),
                (false, _) => from_file.extend([OsString::from(format!("--{long}")), OsString::from(value)]),
            }
        }
    }
    let mut out: Vec<OsString> = args.iter().take(2).cloned().collect();
    out.extend(from_file);
    out.extend(args.iter().skip(2).cloned());
    Ok(out)
}

/// A setting's values as the command line spells them (a list: one per repetition).
fn values(key: &str, value: &toml::Value) -> Result<Vec<String>> {
    let one = |v: &toml::Value| match v {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        _ => Err(anyhow!("`{key}`: a string, number, boolean or a list of them")),
    };
    match value {
        toml::Value::Array(items) => items.iter().map(one).collect(),
        v => Ok(vec![one(v)?]),
    }
}

/// The effective configuration of `threatflow COMMAND --config FILE`, as TOML: every option the
/// file sets, and the defaults of the others as comments; secrets redacted.
pub fn effective(command: &str, file: &Path) -> Result<String> {
    let args = with_config_file(vec!["threatflow".into(), command.into(), "--config".into(), file.into()])?;
    let cli = Cli::command();
    let matches = cli.clone().try_get_matches_from(args).map_err(|e| anyhow!("{e}"))?;
    let (_, matches) = matches.subcommand().ok_or_else(|| anyhow!("no command"))?;
    let sub = cli.find_subcommand(command).ok_or_else(|| anyhow!("no command {command}"))?;
    let mut out = String::new();
    for arg in sub.get_arguments().filter(|a| a.get_long().is_some() && a.get_id() != "help") {
        let id = arg.get_id().as_str();
        let Some(raw) = matches.get_raw(id) else { continue };
        let shown: Vec<String> = raw.map(|v| redact(&v.to_string_lossy())).collect();
        let key = arg.get_long().unwrap_or(id).replace('-', "_");
        let quoted: Vec<String> = shown.iter().map(|v| toml_value(v).to_string()).collect();
        let repeatable = matches!(arg.get_action(), clap::ArgAction::Append);
        let value = match (repeatable, quoted.as_slice()) {
            (false, [one]) => one.clone(),
            _ => format!("[{}]", quoted.join(", ")),
        };
        // Defaults as comments: the printout is a configuration of the same job.
        match matches.value_source(id) {
            Some(clap::parser::ValueSource::DefaultValue) => out += &format!("# {key} = {value} (default)\n"),
            _ => out += &format!("{key} = {value}\n"),
        }
    }
    Ok(out)
}

/// A value as TOML: a number or a boolean when it reads as one, else a string.
fn toml_value(value: &str) -> toml::Value {
    match (value.parse::<i64>(), value.parse::<bool>()) {
        (Ok(number), _) => toml::Value::Integer(number),
        (_, Ok(boolean)) => toml::Value::Boolean(boolean),
        _ => toml::Value::String(value.to_string()),
    }
}

/// A `key=value` setting whose key names a secret, with its value hidden.
fn redact(value: &str) -> String {
    match value.split_once('=') {
        Some((key, _)) if ["password", "secret", "token", "key"].iter().any(|s| key.to_ascii_lowercase().contains(s)) && !key.ends_with("location") => {
            format!("{key}=<redacted>")
        }
        _ => value.to_string(),
    }
}
