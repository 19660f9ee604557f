//! Reading a config: TOML text, `FLUISTER__…` overrides one at a time,
//! relative paths, and errors that name the key and the line or variable.

use std::path::{Path, PathBuf};

use super::*;

/// One line: where (line, and the offending line's text) and what.
fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let mut line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            // A limits table reports a bad value at its header, naming the
            // key first (`core::limit_table`): point at the key's line.
            let header = text.lines().nth(line - 1).unwrap_or("").trim();
            let section = header.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
            let key = message.strip_prefix('`').and_then(|m| m.split_once('`'));
            if let (Some(section), Some((key, _))) = (section, key)
                && let Some(at) = line_of_key(text, &format!("{section}.{key}"))
            {
                line = at;
            }
            let source = text.lines().nth(line - 1).unwrap_or("").trim();
            format!("line {line} (`{source}`): {message}")
        }
        None => message,
    }
}

/// A transport limit still written under `[limits]`: where it went.
fn moved_transport_key(text: &str) -> Option<String> {
    let table: toml::Table = toml::from_str(text).ok()?;
    let limits = table.get("limits")?.as_table()?;
    let key = MOVED_TO_TRANSPORT
        .iter()
        .find(|k| limits.contains_key(**k))?;
    let line = line_of_key(text, &format!("limits.{key}"))
        .map(|l| format!("line {l}: "))
        .unwrap_or_default();
    Some(format!(
        "{line}`limits.{key}` moved to the `[transport]` section; write it there as `{key}`"
    ))
}

/// The 1-based line on which a dotted `key` is written in `text`.
fn line_of_key(text: &str, key: &str) -> Option<usize> {
    let document = toml::de::DeTable::parse(text).ok()?;
    let mut parts = key.split('.');
    let mut value = document.get_ref().get(parts.next()?)?;
    for part in parts {
        value = value.get_ref().get(part)?;
    }
    let start = value.span().start.min(text.len());
    Some(text[..start].matches('\n').count() + 1)
}

/// The environment variable that overrides `key`.
pub fn env_var_for(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.replace('.', "__").to_uppercase())
}

/// Overrides from the environment: (variable, dotted key, value).
fn env_overrides(
    env: impl IntoIterator<Item = (String, String)>,
) -> Vec<(String, Vec<String>, toml::Value)> {
    let mut out: Vec<_> = env
        .into_iter()
        .filter_map(|(var, raw)| {
            let path = var.strip_prefix(ENV_PREFIX)?;
            let path: Vec<String> = path.split("__").map(|p| p.to_lowercase()).collect();
            // A TOML value if it is one (200, true, ["nl"]), else a string.
            let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or(toml::Value::String(raw));
            Some((var, path, value))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let Some((last, parents)) = path.split_last() else {
        return Err("names no key".into());
    };
    let mut here = table;
    for p in parents {
        let entry = here
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(Default::default()));
        here = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{p}` is not a table"))?;
    }
    here.insert(last.clone(), value);
    Ok(())
}

impl RelayConfig {
    /// Reads, parses, resolves and validates a config file, with the
    /// process's `FLUISTER__…` overrides.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with_env(path, std::env::vars())
    }

    /// The embedded default with the process's `FLUISTER__…` overrides.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::parse_with_env("", std::env::vars())
    }

    /// [`RelayConfig::load`] with the given environment.
    pub fn load_with_env(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let text = crate::files::read_text(path, crate::files::MAX_CONFIG_BYTES).map_err(|e| {
            ConfigError::Read {
                path: path.to_owned(),
                source: e,
            }
        })?;
        let mut config = Self::parse_with_env(&text, env).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            ConfigError::InvalidAt {
                source_of_value,
                key,
                reason,
                ..
            } => ConfigError::InvalidAt {
                path: path.to_owned(),
                source_of_value,
                key,
                reason,
            },
            other => other,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut config.tls_cert,
            &mut config.tls_key,
            &mut config.counsellor_ca,
            &mut config.counsellor_crl,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if let Some(store) = config.stats.as_mut().and_then(|s| s.store.as_mut())
            && store.is_relative()
        {
            *store = base.join(&*store);
        }
        Ok(config)
    }

    /// Parses and validates config text (relative paths stay relative).
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        Self::parse_with_env(text, std::iter::empty())
    }

    /// Parses config text, applies environment overrides, validates.
    pub fn parse_with_env(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        // The file alone first, so that its errors carry their lines. A
        // transport key still under `[limits]` is refused there as unknown;
        // only then is the text read again, to say where the key went.
        let from_file: RelayConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: moved_transport_key(text).unwrap_or_else(|| describe_toml_error(text, &e)),
        })?;
        let overrides = env_overrides(env);
        let config = if overrides.is_empty() {
            from_file
        } else {
            let mut table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
                path: PathBuf::new(),
                message: describe_toml_error(text, &e),
            })?;
            // One at a time, so that an error names its variable.
            for (var, path, value) in &overrides {
                set_path(&mut table, path, value.clone()).map_err(|message| ConfigError::Env {
                    var: var.clone(),
                    message,
                })?;
                toml::Value::Table(table.clone())
                    .try_into::<RelayConfig>()
                    .map_err(|e| ConfigError::Env {
                        var: var.clone(),
                        message: e.message().trim().replace('\n', " "),
                    })?;
            }
            toml::Value::Table(table)
                .try_into()
                .map_err(|e| ConfigError::Env {
                    var: "FLUISTER__*".into(),
                    message: e.message().to_string(),
                })?
        };
        config.validate().map_err(|e| match e {
            ConfigError::Invalid { key, reason } => {
                let var = env_var_for(key);
                let source_of_value = if overrides.iter().any(|(v, _, _)| *v == var) {
                    format!("environment variable {var}")
                } else {
                    match line_of_key(text, key) {
                        Some(line) => format!("line {line}"),
                        None => "default value".into(),
                    }
                };
                ConfigError::InvalidAt {
                    path: PathBuf::new(),
                    source_of_value,
                    key,
                    reason,
                }
            }
            other => other,
        })?;
        Ok(config)
    }
}
