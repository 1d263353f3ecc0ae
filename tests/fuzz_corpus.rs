//! Every fuzz target's seed corpus (`fuzz/corpus/<target>/`) runs here as a regression test,
//! with the same checks the fuzzers use.

#[path = "../fuzz/checks.rs"]
mod checks;

fn run(target: &str, check: fn(&[u8])) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "{target}: {} fails", path.display());
        files += 1;
    }
    assert!(files >= 3, "{target}: the corpus has {files} files");
}

#[test]
fn config_corpus() {
    run("config", checks::config);
}

#[test]
fn diff_corpus() {
    run("diff", checks::diff);
}

#[test]
fn diff_text_corpus() {
    run("diff_text", checks::diff_text);
}

#[test]
fn client_request_corpus() {
    run("client_request", checks::client_request);
}

#[test]
fn websocket_input_corpus() {
    run("websocket_input", checks::websocket_input);
}

#[test]
fn resume_id_corpus() {
    run("resume_id", checks::resume_id);
}

#[test]
fn cluster_message_corpus() {
    run("cluster_message", checks::cluster_message);
}
