//! The configuration file and the environment, for any clap [`Command`]:
//! every long flag is also a key of a TOML file (`udp_bind` for
//! `--udp-bind`) and an environment variable (`VOICE_UDP_BIND`), with the
//! precedence flags > environment > file > defaults.
//!
//! The file is read into the same strings a command line would carry and
//! each value is checked with its flag's own parser, so a setting means the
//! same whichever way it comes, and an error names the file, the line and
//! the key. What the file cannot say is refused: unknown keys, tables, and
//! values of a shape no flag takes.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::Path;

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};

/// The prefix of every setting's environment variable.
pub const ENV_PREFIX: &str = "VOICE_";

/// Settings whose values are never shown ([`effective`] masks them).
pub const SECRET_KEYS: &[&str] = &["secret"];

/// Flags that are not settings: they say what to do, not how to run.
const NOT_SETTINGS: &[&str] = &["help", "version", "config", "print_config"];

/// A configuration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// It could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// It is not TOML.
    #[error("{path}: {message}")]
    Syntax {
        /// The file.
        path: String,
        /// The parser's message.
        message: String,
    },
    /// A key is unknown or its value unusable.
    #[error("{path}:{line}: {key}: {message}")]
    Setting {
        /// The file.
        path: String,
        /// The key's line (from 1).
        line: usize,
        /// The key.
        key: String,
        /// What is wrong (never the value: it may be the secret).
        message: String,
    },
}

/// The key of a flag in a file: its long name with `_` for `-`.
pub fn key(arg: &Arg) -> Option<String> {
    let long = arg.get_long()?;
    let id = arg.get_id().as_str();
    (!NOT_SETTINGS.contains(&id)).then(|| long.replace('-', "_"))
}

/// `cmd` with an environment variable for every setting that has none
/// (`VOICE_` and the key in capitals).
pub fn with_env(cmd: Command) -> Command {
    cmd.mut_args(|arg| match (key(&arg), arg.get_env()) {
        (Some(key), None) => {
            // Built once per flag at start-up; clap keeps names as
            // `&'static str`.
            let var: &'static str =
                Box::leak(format!("{ENV_PREFIX}{}", key.to_uppercase()).into_boxed_str());
            let arg = arg.env(var);
            if SECRET_KEYS.contains(&key.as_str()) {
                arg.hide_env_values(true)
            } else {
                arg
            }
        }
        _ => arg,
    })
}

/// One setting read from a file: the arguments it stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSetting {
    /// The flag's id.
    pub id: String,
    /// The command-line arguments with the same meaning.
    pub args: Vec<OsString>,
}

/// Reads the settings of the TOML file `path` for `cmd`.
pub fn read(cmd: &Command, path: &Path) -> Result<Vec<FileSetting>, FileError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: shown.clone(),
        source,
    })?;
    parse(cmd, &shown, &text)
}

/// Parses settings for `cmd` from TOML `text` (`path` names it in errors).
pub fn parse(cmd: &Command, path: &str, text: &str) -> Result<Vec<FileSetting>, FileError> {
    let table: BTreeMap<toml::Spanned<String>, toml::Spanned<toml::Value>> =
        toml::from_str(text).map_err(|e: toml::de::Error| {
            // The parser's own rendering quotes the line (the secret may
            // be on it): its line number and message only.
            let at = e
                .span()
                .map(|span| text[..span.start].matches('\n').count() + 1);
            FileError::Syntax {
                path: path.to_owned(),
                message: format!(
                    "line {}: {}",
                    at.map_or_else(|| "?".to_owned(), |l| l.to_string()),
                    e.message().trim_end().replace('\n', "; ")
                ),
            }
        })?;
    let mut settings = Vec::new();
    for (k, value) in table {
        let line = 1 + text[..k.span().start].matches('\n').count();
        let error = |message: String| FileError::Setting {
            path: path.to_owned(),
            line,
            key: k.get_ref().clone(),
            message,
        };
        let arg = cmd
            .get_arguments()
            .find(|a| key(a).as_deref() == Some(k.get_ref().as_str()))
            .ok_or_else(|| error("unknown setting".into()))?;
        let values = strings(arg, value.get_ref()).map_err(error)?;
        let flag = format!("--{}", arg.get_long().expect("settings have long names"));
        let mut args = Vec::new();
        if is_switch(arg) {
            if values == ["true"] {
                args.push(OsString::from(&flag));
            }
        } else {
            for v in values {
                check(arg, &v).map_err(error)?;
                args.push(OsString::from(&flag));
                args.push(OsString::from(v));
            }
        }
        settings.push(FileSetting {
            id: arg.get_id().to_string(),
            args,
        });
    }
    Ok(settings)
}

/// Checks `value` with `arg`'s own parser (alone: the flags it requires
/// or conflicts with are not there). The message never repeats the value.
fn check(arg: &Arg, value: &str) -> Result<(), String> {
    use clap::error::{ContextKind, ContextValue};
    let alone = Command::new("check").no_binary_name(true).arg(
        Arg::new("value")
            .long("value")
            .allow_hyphen_values(true)
            .value_parser(arg.get_value_parser().clone()),
    );
    let Err(e) = alone.try_get_matches_from(["--value", value]) else {
        return Ok(());
    };
    let mut why = match std::error::Error::source(&e) {
        Some(source) => format!("invalid value: {source}"),
        None => "invalid value".to_owned(),
    };
    if let Some(ContextValue::Strings(valid)) = e.get(ContextKind::ValidValue) {
        let _ = write!(why, " (one of {})", valid.join(", "));
    }
    // A parser's message may quote what it was given.
    if !value.is_empty() {
        why = why.replace(value, "<value>");
    }
    Err(why)
}

/// Whether `arg` takes several values (repeated, or a delimited list).
fn takes_many(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::Append) || arg.get_value_delimiter().is_some()
}

/// Whether `arg` is a switch (present or not, no value).
fn is_switch(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::SetTrue)
}

/// The strings a value stands for: one, or one per element of a list for
/// a flag that takes several.
fn strings(arg: &Arg, value: &toml::Value) -> Result<Vec<String>, String> {
    let flag = is_switch(arg);
    let one = |v: &toml::Value| -> Result<String, String> {
        match v {
            toml::Value::Boolean(b) if flag => Ok(b.to_string()),
            _ if flag => Err("expected true or false".into()),
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(n) => Ok(n.to_string()),
            toml::Value::Float(f) => Ok(f.to_string()),
            _ => Err("expected a string or a number".into()),
        }
    };
    match value {
        toml::Value::Array(items) if takes_many(arg) => items.iter().map(one).collect(),
        toml::Value::Array(_) => Err("takes one value, not a list".into()),
        v => Ok(vec![one(v)?]),
    }
}

/// The arguments to add to a command line for the file's settings that
/// neither the command line nor the environment set (`matches` parsed
/// them).
pub fn beneath(matches: &ArgMatches, file: &[FileSetting]) -> Vec<OsString> {
    file.iter()
        .filter(|s| {
            !matches!(
                matches.value_source(&s.id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        })
        .flat_map(|s| s.args.clone())
        .collect()
}

/// Where a setting's effective value came from: `from_file` names the ids
/// the file set (they reach clap as command-line arguments).
fn source(
    matches: &ArgMatches,
    id: &str,
    from_file: &[FileSetting],
    cli: &ArgMatches,
) -> &'static str {
    match cli.value_source(id) {
        Some(ValueSource::CommandLine) => "flag",
        Some(ValueSource::EnvVariable) => "environment",
        _ if from_file.iter().any(|s| s.id == id) => "file",
        _ => match matches.value_source(id) {
            Some(ValueSource::DefaultValue) => "default",
            _ => "unset",
        },
    }
}

/// The effective configuration as TOML, each setting with where it came
/// from; secrets masked. `cli` is what the command line and environment
/// alone gave, `matches` the final parse.
pub fn effective(
    cmd: &Command,
    matches: &ArgMatches,
    cli: &ArgMatches,
    file: &[FileSetting],
) -> String {
    let mut out = String::new();
    for arg in cmd.get_arguments() {
        let Some(key) = key(arg) else { continue };
        let id = arg.get_id().as_str();
        let from = source(matches, id, file, cli);
        let values: Vec<String> = matches
            .get_raw(id)
            .map(|v| v.map(|v| v.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let flag = is_switch(arg);
        let shown = if values.is_empty() && !flag {
            let _ = writeln!(out, "# {key} = (none)  # {from}");
            continue;
        } else if SECRET_KEYS.contains(&key.as_str()) {
            "\"********\"".to_owned()
        } else if flag {
            matches.get_flag(id).to_string()
        } else {
            literal(arg, &values)
        };
        let _ = writeln!(out, "{key} = {shown}  # {from}");
    }
    out
}

/// `values` as a TOML literal for `arg`.
fn literal(arg: &Arg, values: &[String]) -> String {
    let scalar = |v: &String| -> String {
        if v.parse::<i64>().is_ok() || v.parse::<f64>().is_ok_and(f64::is_finite) {
            v.clone()
        } else {
            toml::Value::String(v.clone()).to_string()
        }
    };
    if takes_many(arg) {
        let items: Vec<String> = values.iter().map(scalar).collect();
        format!("[{}]", items.join(", "))
    } else {
        values.first().map(scalar).unwrap_or_default()
    }
}

/// An annotated configuration file for `cmd`: every setting with its help,
/// its environment variable and its default (settings without a default
/// commented out).
pub fn example(cmd: &Command, header: &str) -> String {
    let mut out = String::new();
    for line in header.lines() {
        out.push_str(if line.is_empty() { "#\n" } else { "# " });
        if !line.is_empty() {
            let _ = writeln!(out, "{line}");
        }
    }
    for arg in cmd.get_arguments() {
        let Some(key) = key(arg) else { continue };
        out.push('\n');
        let help = arg
            .get_long_help()
            .or(arg.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default();
        for line in wrap(&help, 76) {
            let _ = writeln!(out, "# {line}");
        }
        if let Some(var) = arg.get_env() {
            let _ = writeln!(out, "# Environment: {}", var.to_string_lossy());
        }
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        if is_switch(arg) {
            let _ = writeln!(out, "{key} = false");
        } else if defaults.is_empty() {
            let _ = writeln!(out, "# {key} =");
        } else {
            let _ = writeln!(out, "{key} = {}", literal(arg, &defaults));
        }
    }
    out
}

/// `text` in lines of at most `width` characters (words kept whole).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::value_parser;

    fn cmd() -> Command {
        with_env(
            Command::new("t")
                .arg(
                    Arg::new("udp_bind")
                        .long("udp-bind")
                        .default_value("127.0.0.1:5490")
                        .value_parser(value_parser!(std::net::SocketAddr))
                        .help("UDP address."),
                )
                .arg(
                    Arg::new("rate")
                        .long("rate")
                        .default_value("10")
                        .value_parser(value_parser!(f64)),
                )
                .arg(Arg::new("plain").long("plain").action(ArgAction::SetTrue))
                .arg(Arg::new("name").long("name").action(ArgAction::Append))
                .arg(Arg::new("secret").long("secret"))
                .arg(Arg::new("config").long("config")),
        )
    }

    /// Parses `argv` and `file` as a binary does: command line and
    /// environment first, the file beneath them.
    fn run(argv: &[&str], file: &str) -> Result<(ArgMatches, String), FileError> {
        let cmd = cmd();
        let cli = cmd.clone().try_get_matches_from(argv).unwrap();
        let settings = parse(&cmd, "voice.toml", file)?;
        let mut all: Vec<OsString> = argv.iter().map(OsString::from).collect();
        all.extend(beneath(&cli, &settings));
        let matches = cmd.clone().try_get_matches_from(all).unwrap();
        let shown = effective(&cmd, &matches, &cli, &settings);
        Ok((matches, shown))
    }

    #[test]
    fn flags_win_over_the_file_which_wins_over_defaults() {
        let file = "udp_bind = \"0.0.0.0:1\"\nrate = 2.5\nplain = true\nname = [\"a\", \"b\"]\n\
                    secret = \"s3cr3t-value\"\n";
        let (m, shown) = run(&["t", "--rate", "7"], file).unwrap();
        assert_eq!(m.get_one::<f64>("rate"), Some(&7.0), "the flag wins");
        assert_eq!(
            m.get_one::<std::net::SocketAddr>("udp_bind")
                .map(|a| a.port()),
            Some(1),
            "the file beats the default"
        );
        assert!(m.get_flag("plain"));
        let names: Vec<&String> = m.get_many("name").unwrap().collect();
        assert_eq!(names, ["a", "b"]);
        assert!(shown.contains("rate = 7  # flag"), "{shown}");
        assert!(
            shown.contains("udp_bind = \"0.0.0.0:1\"  # file"),
            "{shown}"
        );
        assert!(shown.contains("secret = \"********\"  # file"), "{shown}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        let (m, shown) = run(&["t"], "").unwrap();
        assert_eq!(m.get_one::<f64>("rate"), Some(&10.0));
        assert!(shown.contains("rate = 10  # default"), "{shown}");
        assert!(shown.contains("# secret = (none)  # unset"), "{shown}");
    }

    /// (The environment's place between flags and file is tested on the
    /// real binary, `control/tests/config.rs`: setting variables here
    /// would race the other tests' parses.)
    #[test]
    fn every_setting_has_a_variable_and_secrets_stay_hidden() {
        let cmd = cmd();
        let rate = cmd.get_arguments().find(|a| a.get_id() == "rate").unwrap();
        assert_eq!(rate.get_env().unwrap(), "VOICE_RATE");
        let config = cmd
            .get_arguments()
            .find(|a| a.get_id() == "config")
            .unwrap();
        assert_eq!(config.get_env(), None, "not a setting");
        let secret = cmd
            .get_arguments()
            .find(|a| a.get_id() == "secret")
            .unwrap();
        assert!(secret.is_hide_env_values_set());
    }

    #[test]
    fn errors_name_the_file_line_and_key_never_the_value() {
        let cases = [
            (
                "rate = 1\nbogus = 2\n",
                "voice.toml:2: bogus: unknown setting",
            ),
            (
                "\n\nudp_bind = \"no-such-address\"\n",
                "voice.toml:3: udp_bind:",
            ),
            ("rate = \"fast\"\n", "voice.toml:1: rate:"),
            (
                "plain = \"yes\"\n",
                "voice.toml:1: plain: expected true or false",
            ),
            (
                "rate = [1, 2]\n",
                "voice.toml:1: rate: takes one value, not a list",
            ),
            ("[table]\nx = 1\n", "voice.toml:1: table: unknown setting"),
            (
                "name = [[1]]\n",
                "voice.toml:1: name: expected a string or a number",
            ),
        ];
        for (file, expected) in cases {
            let e = run(&["t"], file).unwrap_err().to_string();
            assert!(e.starts_with(expected), "{file:?}: {e}");
            assert!(!e.contains("no-such-address") && !e.contains("fast"), "{e}");
        }
        let e = run(&["t"], "rate = 1\nsecret = \"hunter2\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("voice.toml: line 2: "), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn the_example_lists_every_setting_with_its_default() {
        let example = example(&cmd(), "An example.");
        assert!(example.starts_with("# An example.\n"));
        assert!(
            example.contains(
                "# UDP address.\n# Environment: VOICE_UDP_BIND\nudp_bind = \"127.0.0.1:5490\"\n"
            ),
            "{example}"
        );
        assert!(example.contains("\nrate = 10\n"));
        assert!(example.contains("\nplain = false\n"));
        assert!(example.contains("\n# secret =\n"));
        assert!(!example.contains("config ="));
        // It reads back as the defaults.
        let (m, _) = run(&["t"], &example).unwrap();
        assert_eq!(m.get_one::<f64>("rate"), Some(&10.0));
        assert!(!m.get_flag("plain"));
    }
}
