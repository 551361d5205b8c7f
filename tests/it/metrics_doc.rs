//! `docs/metrics.md` and `src/names.rs` name the same metrics.

use std::collections::BTreeSet;

use tierscope::names;

#[test]
fn the_metric_reference_and_the_code_agree() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md"))
        .expect("docs/metrics.md is in the repository");
    // Every `tierscope_*` name in backquotes at the start of a table row.
    let documented: BTreeSet<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `tierscope_"))
        .filter_map(|rest| rest.split('`').next())
        .map(|name| format!("tierscope_{name}"))
        .collect();
    let described: BTreeSet<String> = names::DESCRIPTIONS
        .iter()
        .map(|(n, ..)| n.to_string())
        .collect();
    let missing_in_doc: Vec<_> = described.difference(&documented).collect();
    let missing_in_code: Vec<_> = documented.difference(&described).collect();
    assert!(
        missing_in_doc.is_empty() && missing_in_code.is_empty(),
        "not in docs/metrics.md: {missing_in_doc:?}; documented but not in names.rs: {missing_in_code:?}"
    );
    for (name, ..) in names::DESCRIPTIONS {
        assert!(doc.contains(name));
    }
}
