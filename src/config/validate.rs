//! The checks no type can express: keys that come together, loopback-only
//! defaults, origins, the limits' ranges and relations, the service.

use super::*;

/// Whether `origin` is an origin as browsers send it: `https://host`,
/// `http://host`, with an optional port, nothing after.
pub fn check_origin(origin: &str) -> Result<(), &'static str> {
    let rest = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .ok_or("an origin starts with https:// or http://")?;
    if rest.is_empty() {
        return Err("an origin names a host");
    }
    if rest.contains('/') {
        return Err("an origin has no path (not even a trailing /)");
    }
    if !rest
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        || rest.bytes().any(|b| b.is_ascii_uppercase())
    {
        return Err("an origin is lowercase ASCII: scheme, host and optional port");
    }
    Ok(())
}

fn range<T: PartialOrd + std::fmt::Display>(
    key: &'static str,
    value: T,
    lo: T,
    hi: T,
) -> Result<(), ConfigError> {
    if value < lo || value > hi {
        return Err(ConfigError::Invalid {
            key,
            reason: format!("{value} is out of range {lo}..={hi}"),
        });
    }
    Ok(())
}

impl RelayConfig {
    /// Checks `web_origins` and `[web]`.
    fn validate_web(&self) -> Result<(), ConfigError> {
        for relay in &self.web.relays {
            if let Err(reason) = check_host_port(relay) {
                return Err(ConfigError::Invalid {
                    key: "web.relays",
                    reason: format!("{relay:?}: {reason}"),
                });
            }
        }
        for origin in &self.web_origins {
            if let Err(reason) = check_origin(origin) {
                return Err(ConfigError::Invalid {
                    key: "web_origins",
                    reason: format!("{origin:?}: {reason}"),
                });
            }
        }
        let web = &self.web;
        if let Some(key) = &web.org_key
            && !(key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(ConfigError::Invalid {
                key: "web.org_key",
                reason: "not an organisation public key (64 hex digits)".into(),
            });
        }
        let name_len = web.organisation.chars().count();
        if name_len == 0 || name_len > 100 || web.organisation.chars().any(char::is_control) {
            return Err(ConfigError::Invalid {
                key: "web.organisation",
                reason: "must be 1 to 100 characters without control characters".into(),
            });
        }
        if !(web.exit_url.starts_with("https://") || web.exit_url.starts_with("http://"))
            || web
                .exit_url
                .chars()
                .any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(ConfigError::Invalid {
                key: "web.exit_url",
                reason: format!("{:?} is not an http(s) URL", web.exit_url),
            });
        }
        // The built-in page has Dutch and English; a page of the operator's
        // own (`page_dir`) may have any language, listed in its
        // i18n/languages.json.
        let two_letters = web.default_language.len() == 2
            && web.default_language.bytes().all(|b| b.is_ascii_lowercase());
        let known = match web.page_dir {
            None => PAGE_LANGUAGES.contains(&web.default_language.as_str()),
            Some(_) => two_letters,
        };
        if !known {
            return Err(ConfigError::Invalid {
                key: "web.default_language",
                reason: format!(
                    "{:?}: the built-in page has text for {} (a page in page_dir may \
                     have any two-letter language code)",
                    web.default_language,
                    PAGE_LANGUAGES.join(", ")
                ),
            });
        }
        if let Some(addr) = web.loopback_http
            && !addr.ip().is_loopback()
        {
            return Err(ConfigError::Invalid {
                key: "web.loopback_http",
                reason: format!(
                    "{addr} is not a loopback address: plain HTTP carries chats \
                     unencrypted to the network; use the TLS port instead"
                ),
            });
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError::Invalid {
                key: "tls_cert",
                reason: "tls_cert and tls_key must be given together".into(),
            });
        }
        if self.tls_cert.is_none() && !self.listen.ip().is_loopback() {
            return Err(ConfigError::Invalid {
                key: "tls_cert",
                reason: "a generated certificate is only allowed on a loopback address; \
                         set tls_cert and tls_key to listen elsewhere"
                    .into(),
            });
        }
        if self.counsellor_crl.is_some() && self.counsellor_ca.is_none() {
            return Err(ConfigError::Invalid {
                key: "counsellor_crl",
                reason: "a revocation list needs `counsellor_ca`, whose CA signed it".into(),
            });
        }
        range("tls_watch_secs", self.tls_watch_secs, 0, 3600)?;
        self.validate_web()?;
        if !["error", "warn", "info", "debug", "trace"].contains(&self.log_level.as_str()) {
            return Err(ConfigError::Invalid {
                key: "log_level",
                reason: format!(
                    "{:?} is not one of error, warn, info, debug, trace",
                    self.log_level
                ),
            });
        }
        self.limits.check().map_err(invalid_limit)?;
        self.transport.check().map_err(invalid_limit)?;
        self.service()?;
        if let Some(cluster) = &self.cluster {
            cluster.validate()?;
        }
        if let Some(stats) = &self.stats {
            stats.stats()?;
            if stats.store.is_none() && self.cluster.is_none() {
                return Err(ConfigError::Invalid {
                    key: "stats.store",
                    reason: "name the file for the counters (only in a cluster may a relay \
                             leave it to the designated keeper)"
                        .into(),
                });
            }
        }
        Ok(())
    }

    /// The helpline as configured: topics, languages, opening hours.
    pub fn service(&self) -> Result<Service, ConfigError> {
        let invalid = |key: &'static str, reason: String| ConfigError::Invalid { key, reason };
        let languages = match &self.languages {
            None => Service::default_languages(),
            Some(list) => {
                let mut out = Vec::new();
                for code in list {
                    let l = Language::parse(code).ok_or_else(|| {
                        invalid(
                            "languages",
                            format!("{code:?} is not a two-letter lowercase code"),
                        )
                    })?;
                    if out.contains(&l) {
                        return Err(invalid("languages", format!("{code:?} is listed twice")));
                    }
                    out.push(l);
                }
                out
            }
        };
        if languages.is_empty() || languages.len() > MAX_LANGUAGES {
            return Err(invalid(
                "languages",
                format!("give 1 to {MAX_LANGUAGES} languages"),
            ));
        }
        let topics = match &self.topics {
            None => Service::default_topics(),
            Some(list) => {
                let mut out: Vec<Topic> = Vec::new();
                for t in list {
                    let id = TopicId::new(t.id)
                        .ok_or_else(|| invalid("topics.id", "0 is not a topic id".into()))?;
                    if out.iter().any(|o| o.id == id) {
                        return Err(invalid("topics.id", format!("{} is used twice", t.id)));
                    }
                    let label = |key: &'static str, text: &str| {
                        Label::new(text).map_err(|e| invalid(key, format!("{text:?}: {e}")))
                    };
                    out.push(Topic {
                        id,
                        label_nl: label("topics.nl", &t.nl)?,
                        label_en: label("topics.en", &t.en)?,
                    });
                }
                out
            }
        };
        if topics.len() > MAX_TOPICS {
            return Err(invalid("topics", format!("at most {MAX_TOPICS} topics")));
        }
        let hours = match &self.hours {
            None => OpeningHours::always(),
            Some(h) => {
                let ranges =
                    |key: &'static str, list: &[String]| -> Result<Vec<Range>, ConfigError> {
                        list.iter()
                            .map(|r| Range::parse(r).map_err(|e| invalid(key, e.to_string())))
                            .collect()
                    };
                let week = [
                    ranges("hours.monday", &h.monday)?,
                    ranges("hours.tuesday", &h.tuesday)?,
                    ranges("hours.wednesday", &h.wednesday)?,
                    ranges("hours.thursday", &h.thursday)?,
                    ranges("hours.friday", &h.friday)?,
                    ranges("hours.saturday", &h.saturday)?,
                    ranges("hours.sunday", &h.sunday)?,
                ];
                let mut exceptions = std::collections::BTreeMap::new();
                for e in &h.exceptions {
                    let date = OpeningHours::parse_date(&e.date)
                        .map_err(|err| invalid("hours.exceptions.date", err.to_string()))?;
                    exceptions.insert(date, ranges("hours.exceptions.open", &e.open)?);
                }
                OpeningHours::new(&h.time_zone, week, exceptions)
                    .map_err(|e| invalid("hours.time_zone", e.to_string()))?
            }
        };
        let coding = match &self.stats {
            Some(stats) => Some(stats.stats()?.form),
            None => None,
        };
        Ok(Service {
            topics,
            languages,
            hours,
            coding,
        })
    }
}

impl ClusterConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: String| Err(ConfigError::Invalid { key, reason });
        if self.servers.is_empty() {
            return invalid("cluster.servers", "name at least one NATS server".into());
        }
        for server in &self.servers {
            if let Err(reason) = check_nats_url(server) {
                return invalid("cluster.servers", format!("{server:?}: {reason}"));
            }
        }
        let prefix_ok = (1..=32).contains(&self.prefix.len())
            && (self.prefix.bytes()).all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !prefix_ok {
            return invalid(
                "cluster.prefix",
                "1 to 32 of A-Z, a-z, 0-9, _ and - (it names subjects and buckets)".into(),
            );
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return invalid(
                "cluster.tls_cert",
                "cluster.tls_cert and cluster.tls_key must be given together".into(),
            );
        }
        range("cluster.replicas", self.replicas, 1, 5)
    }

    /// Whether the connection to NATS uses TLS.
    pub fn uses_tls(&self) -> bool {
        self.tls_ca.is_some()
            || self.tls_cert.is_some()
            || self.servers.iter().any(|s| s.starts_with("tls://"))
    }
}

/// `host:port` as a browser reaches a relay: a lowercase DNS name or an
/// address (IPv6 in brackets), and a port from 1 to 65535.
fn check_host_port(text: &str) -> Result<(), &'static str> {
    let (host, port) = text
        .rsplit_once(':')
        .ok_or("a relay is host:port, e.g. relay-b.example.org:443")?;
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err("a relay is host:port with a port from 1 to 65535");
    }
    let plain = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.[]:".contains(&b);
    if !host.bytes().all(plain) {
        return Err("a relay's host is a lowercase name or address, without scheme or path");
    }
    Ok(())
}

/// A NATS server URL: `nats://` or `tls://`, a host, a port, nothing else.
fn check_nats_url(url: &str) -> Result<(), &'static str> {
    let rest = url
        .strip_prefix("nats://")
        .or_else(|| url.strip_prefix("tls://"))
        .ok_or("a NATS server URL starts with nats:// or tls://")?;
    let host_port = rest.rsplit('@').next().unwrap_or(rest);
    let (host, port) = host_port
        .rsplit_once(':')
        .ok_or("a NATS server URL ends with :port")?;
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err("a NATS server URL has a host and a port from 1 to 65535");
    }
    if host_port.contains('/') {
        return Err("a NATS server URL has no path");
    }
    Ok(())
}
