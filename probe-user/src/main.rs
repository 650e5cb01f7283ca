use std::process::ExitCode;

use clap::Parser as _;
use probe_user::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("conntrace: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Watch(args) => runtime.block_on(probe_user::commands::watch::watch(args)).map(|()| 0),
        Command::Check(args) => probe_user::commands::check::check(args),
        Command::Report(args) => probe_user::commands::report::report(args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        // The reader went away (`conntrace watch | head`): not an error worth a message.
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("conntrace: {e:#}");
            ExitCode::FAILURE
        }
    }
}
