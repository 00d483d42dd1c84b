//! Every example run file in examples/configs parses as a run config (every table rejects unknown keys)
//! and its `[data]` section validates, so a renamed or misspelt key cannot rot in an example. (Loading
//! them whole also checks that their models exist: the showcase test and the runs themselves do that.)

use std::path::Path;

use burnish::trainers::config::RunConfig;

#[test]
fn every_example_config_parses_and_its_data_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/configs");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let cfg: RunConfig =
            toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        cfg.data
            .validate(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        n += 1;
    }
    assert!(
        n >= 12,
        "only {n} example configs found in {}",
        dir.display()
    );
}
