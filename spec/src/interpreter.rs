//! The interpreter a script runs under by its extension, as PM2 picks one when none is given:
//! for `pmcluster import pm2`, `start` of a script that is not executable, and the agent's hint
//! when such a script cannot be run.

use std::path::Path;

/// The program PM2 runs `script` under when no interpreter is given, by its extension.
pub fn by_extension(script: &str) -> Option<&'static str> {
    let ext = Path::new(script).extension()?.to_str()?;
    match ext {
        "js" | "cjs" | "mjs" => Some("node"),
        "py" => Some("python3"),
        "sh" => Some("bash"),
        "rb" => Some("ruby"),
        "pl" => Some("perl"),
        "php" => Some("php"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions() {
        let cases = [
            ("server.js", Some("node")),
            ("www/app.mjs", Some("node")),
            ("run.py", Some("python3")),
            ("x.sh", Some("bash")),
            ("a.rb", Some("ruby")),
            ("a.pl", Some("perl")),
            ("index.php", Some("php")),
            ("server", None),
            ("archive.tar.gz", None),
        ];
        for (script, want) in cases {
            assert_eq!(by_extension(script), want, "{script}");
        }
    }
}
