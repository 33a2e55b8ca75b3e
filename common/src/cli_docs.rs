//! Shell completions and man pages generated from a binary's clap definition (the
//! `completions SHELL` and `man` subcommands of both binaries).

pub use clap_complete::Shell;

use std::io::Write;
use std::process::ExitCode;

/// Writes completions for `shell` to stdout (a closed pipe is not an error).
pub fn print_completions(mut cmd: clap::Command, shell: clap_complete::Shell, name: &str) -> ExitCode {
    let mut text = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut text);
    let _ = std::io::stdout().write_all(&text);
    ExitCode::SUCCESS
}

/// Writes the man page (roff) to stdout.
pub fn print_man(cmd: clap::Command) -> ExitCode {
    let name = cmd.get_name().to_string();
    let mut text = Vec::new();
    match clap_mangen::Man::new(cmd)
        .render(&mut text)
        .and_then(|()| std::io::stdout().write_all(&text))
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::FAILURE
        }
    }
}
