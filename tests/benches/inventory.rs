//! How long the coordinator takes to validate a large inventory (`fleet.toml`): 40,000 nodes in one
//! environment, and 20,000 environments of one node each. Each key's line is found through one index of
//! the file (issue 18: a scan from the start per key took 4.8 s and 16 s here before).
//!
//! `cargo bench -p fleet-tests --bench inventory` prints the figures; nothing is asserted on time.

use std::path::Path;
use std::time::Instant;

use fleet_coordinator::inventory::Inventory;

const HEAD: &str = "[upgrade]\ntarget_version = \"3.0.7\"\ninstaller = 'setup.exe'\n";

fn one_environment(nodes: usize) -> String {
    let members: String = (1..nodes).map(|i| format!("  \"n{i}\",\n")).collect();
    format!(
        "{HEAD}[[environment]]\nname = \"prod\"\nmaster = \"m0\"\nmembers = [\n{members}]\nbackup_dir = 'b'\n"
    )
}

fn one_node_environments(environments: usize) -> String {
    let body: String = (0..environments)
        .map(|i| {
            format!("[[environment]]\nname = \"e{i}\"\nmaster = \"m{i}\"\nmembers = []\nbackup_dir = 'b'\n")
        })
        .collect();
    format!("{HEAD}{body}")
}

fn main() {
    for (what, text) in [
        ("40,000 nodes in one environment", one_environment(40_000)),
        (
            "20,000 environments of one node",
            one_node_environments(20_000),
        ),
    ] {
        let started = Instant::now();
        match Inventory::parse(Path::new("fleet.toml"), &text) {
            Ok(inventory) => println!(
                "{what}: validated in {:.3} s ({} bytes, {} environment(s))",
                started.elapsed().as_secs_f64(),
                text.len(),
                inventory.environments.len()
            ),
            Err(e) => {
                eprintln!("{what}: the generated inventory is invalid: {e}");
                std::process::exit(1);
            }
        }
    }
}
