//! The config against the example file and bad input.

use super::*;

#[test]
fn the_embedded_default_is_valid_and_on_loopback() {
    let c = RelayConfig::default();
    assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
    c.validate().unwrap();
    assert_eq!(RelayConfig::parse("").unwrap(), c);
}

#[test]
fn the_example_config_in_deploy_parses() {
    let text = include_str!("../../deploy/fluister.toml");
    let c = RelayConfig::parse(text).unwrap();
    assert!(c.counsellor_ca.is_some());
}

#[test]
fn a_topic_label_of_invisible_or_reordering_characters_is_refused() {
    for label in ["\u{200b}", "Hulp\u{202e}pleH", "Hulp\u{2028}"] {
        let text = format!("[[topics]]\nid = 1\nnl = \"{label}\"\nen = \"Help\"\n");
        let e = RelayConfig::parse(&text).unwrap_err().to_string();
        assert!(e.contains("topics.nl"), "{e}");
    }
}

/// The limits tables and the documented example agree: the same keys,
/// each set to its default, each paragraph naming its range.
#[test]
fn the_limits_tables_and_the_example_config_agree() {
    let text = include_str!("../../deploy/fluister.toml");
    let example: toml::Table = toml::from_str(text).unwrap();
    for (section, table) in [
        ("limits", Limits::TABLE),
        ("transport", TransportLimits::TABLE),
    ] {
        let written = example[section].as_table().unwrap();
        let mut keys: Vec<&str> = written.keys().map(String::as_str).collect();
        let mut rows: Vec<&str> = table.iter().map(|r| r.key).collect();
        keys.sort();
        rows.sort();
        assert_eq!(keys, rows, "[{section}] keys differ from the table");
        let body = text.split(&format!("[{section}]\n")).nth(1).unwrap();
        let body = body.split("\n[").next().unwrap();
        for row in table {
            let value = written[row.key].as_integer().unwrap() as u64;
            assert_eq!(
                value, row.default,
                "{}: the example is not the default",
                row.path
            );
            assert!(
                row.allows(row.default),
                "{}: default out of range",
                row.path
            );
            let paragraph = body
                .split("\n\n")
                .find(|p| p.lines().any(|l| l.starts_with(&format!("{} = ", row.key))))
                .unwrap();
            assert!(
                paragraph.contains(&row.range_text()),
                "{}: its paragraph does not say {}",
                row.path,
                row.range_text()
            );
        }
    }
    // The defaults of the tables are the defaults of the structs.
    let none = std::collections::BTreeMap::new();
    assert_eq!(Limits::from_numbers(&none).unwrap(), Limits::default());
    assert_eq!(
        TransportLimits::from_numbers(&none).unwrap(),
        TransportLimits::default()
    );
    Limits::default().check().unwrap();
    TransportLimits::default().check().unwrap();
}

#[test]
fn a_transport_key_left_in_limits_is_told_where_it_went() {
    let e = RelayConfig::parse("[limits]\nmax_queue = 10\nidle_timeout_secs = 30\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 3") && e.contains("[transport]"), "{e}");
    let c = RelayConfig::parse("[transport]\nidle_timeout_secs = 30\n").unwrap();
    assert_eq!(c.transport.idle_timeout_secs, 30);
    let e = RelayConfig::parse("[transport]\nkeep_alive_secs = 30\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("transport.keep_alive_secs"), "{e}");
    let e = RelayConfig::parse("[limits]\nmax_connections = 10\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("limits.max_anonymous_connections"), "{e}");
}

#[test]
fn errors_name_the_key_and_line() {
    let e = RelayConfig::parse("listen = \"127.0.0.1:1\"\nbogus = 1\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("bogus") && e.contains("line 2"), "{e}");
    let e = RelayConfig::parse("[limits]\nmax_queue = \"ten\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("max_queue") && e.contains("line 2"), "{e}");
    let e = RelayConfig::parse("[limits]\nmax_queue = 0\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("limits.max_queue"), "{e}");
    let e = RelayConfig::parse("tls_cert = \"a.pem\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("together"), "{e}");
    let e = RelayConfig::parse("listen = \"0.0.0.0:443\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("loopback"), "{e}");
    for origin in [
        "https://chat.example.org/",
        "chat.example.org",
        "https://Chat.example",
    ] {
        let text = format!("web_origins = [\"{origin}\"]\n");
        let e = RelayConfig::parse(&text).unwrap_err().to_string();
        assert!(e.contains("web_origins"), "{e}");
    }
    RelayConfig::parse("web_origins = [\"https://chat.example.org:8443\"]\n").unwrap();
    let e = RelayConfig::parse("[web]\nloopback_http = \"0.0.0.0:80\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("web.loopback_http") && e.contains("loopback"),
        "{e}"
    );
    let e = RelayConfig::parse("[web]\norg_key = \"abc\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("web.org_key"), "{e}");
}

/// The relay config inside a Kubernetes ConfigMap.
fn config_in_manifest(manifest: &str) -> RelayConfig {
    let block: Vec<&str> = manifest
        .split("fluister.toml: |\n")
        .nth(1)
        .unwrap()
        .lines()
        .take_while(|l| l.starts_with("    ") || l.is_empty())
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect();
    RelayConfig::parse(&block.join("\n")).unwrap()
}

#[test]
fn the_kubernetes_config_map_holds_a_valid_config() {
    let config = config_in_manifest(include_str!("../../deploy/k8s/configmap.yaml"));
    assert_eq!(config.transport.drain_deadline_secs, 10);
    let clustered = config_in_manifest(include_str!("../../deploy/k8s/cluster/relays.yaml"));
    let cluster = clustered.cluster.expect("a [cluster] section");
    assert_eq!((cluster.servers.len(), cluster.replicas), (3, 3));
}

#[test]
fn a_cluster_section_is_checked_key_by_key() {
    let base = "[cluster]\nsecret_file = \"s\"\n";
    let ok = RelayConfig::parse(&format!(
        "{base}servers = [\"nats://n1:4222\", \"tls://n2:4222\"]\n"
    ))
    .unwrap();
    let cluster = ok.cluster.as_ref().unwrap();
    assert_eq!((cluster.prefix.as_str(), cluster.replicas), ("fluister", 1));
    assert!(cluster.uses_tls());
    assert!(
        RelayConfig::parse("").unwrap().cluster.is_none(),
        "no NATS without [cluster]"
    );
    for (extra, key) in [
        ("servers = []", "cluster.servers"),
        ("servers = [\"http://n1:4222\"]", "cluster.servers"),
        ("servers = [\"nats://n1\"]", "cluster.servers"),
        (
            "servers = [\"nats://n1:4222\"]\nprefix = \"a.b\"",
            "cluster.prefix",
        ),
        (
            "servers = [\"nats://n1:4222\"]\ntls_cert = \"c.pem\"",
            "cluster.tls_cert",
        ),
        (
            "servers = [\"nats://n1:4222\"]\nreplicas = 7",
            "cluster.replicas",
        ),
    ] {
        let e = RelayConfig::parse(&format!("{base}{extra}\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(key), "{extra}: {e}");
    }
    let e = RelayConfig::parse("[cluster]\nservers = [\"nats://n1:4222\"]\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("secret_file"), "the secret is required: {e}");
}

#[test]
fn the_pages_other_relays_are_host_and_port() {
    let ok = RelayConfig::parse("[web]\nrelays = [\"relay-b.example.org:443\", \"[::1]:7443\"]\n")
        .unwrap();
    assert_eq!(ok.web.relays.len(), 2);
    for bad in [
        "https://relay-b:443",
        "relay-b",
        "relay-b:0",
        "Relay-B:443",
        "relay-b:443/x",
    ] {
        let e = RelayConfig::parse(&format!("[web]\nrelays = [\"{bad}\"]\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("web.relays"), "{bad}: {e}");
    }
}
