//! `pmcluster`: parse the command line, run it, and turn the outcome into an exit code
//! (0 ok, 1 failed, 2 usage or bad input, 3 `status` of a cluster that cannot serve; a closed
//! stdout exits 0).

use std::io::Write;
use std::process::ExitCode;

use pmcluster_cli::args::parse_from;
use pmcluster_cli::error::exit_code;

fn main() -> ExitCode {
    // clap prints help and usage errors itself and exits 0 or 2.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let (cli, warnings) =
        parse_from(args.clone()).unwrap_or_else(|e| pmcluster_cli::pm2::explain(e, &args).exit());
    for warning in warnings {
        let _ = writeln!(std::io::stderr(), "warning: {warning}");
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "error: cannot start the async runtime: {e}"
            );
            return ExitCode::from(1);
        }
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let env = pmcluster_cli::local::Environment::from_process();
    let result = runtime.block_on(pmcluster_cli::run(cli, &env, &mut out));
    let flushed = out.flush();
    let result = result.and_then(|()| flushed.map_err(anyhow::Error::from));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let code = exit_code(&err);
            if code != 0 {
                let _ = writeln!(std::io::stderr(), "error: {err:#}");
            }
            ExitCode::from(code)
        }
    }
}
