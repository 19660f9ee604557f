//! The browser library's own tests (`web/`, run with `node --test`), as
//! part of `cargo test`: the frame codec against `proto/vectors`. Node.js
//! 20 or later must be installed (`.ci/run` installs it).

use std::path::Path;
use std::process::Command;

#[test]
fn the_web_library_passes_its_node_tests() {
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("web");
    let out = Command::new("node")
        .args(["--test", "test/"])
        .current_dir(&web)
        .output()
        .unwrap_or_else(|e| panic!("node (20 or later) must be installed to test web/: {e}"));
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "node --test failed in web/:\n{report}"
    );
    assert!(report.contains("# fail 0"), "{report}");
}
