//! Writes the starting corpus of the binary targets (`wire_specs`, `desired_set`) to `seeds/`:
//! `cargo run --manifest-path fuzz/Cargo.toml --example write_seeds`. The files are committed, so
//! a fuzz run needs no extra build. Proto maps encode in hash order, so a file may come out with
//! other bytes for the same message each time it is written.

use std::path::Path;

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    for (target, seeds) in [
        ("wire_specs", pmcluster_fuzz::seeds::wire()),
        ("desired_set", pmcluster_fuzz::seeds::desired()),
    ] {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        for (name, bytes) in seeds {
            std::fs::write(dir.join(name), bytes)?;
        }
        println!("wrote {}", dir.display());
    }
    Ok(())
}
