//! The tracing subscriber every ssofleet process installs: standard error, or daily files in a log
//! directory (a Windows service has no console); text or JSON lines; the filter from `FLEET_LOG`
//! (default `info`).

use std::path::Path;

use tracing_subscriber::fmt::writer::BoxMakeWriter;

/// How many daily log files are kept in a log directory.
pub const KEEP_LOG_FILES: usize = 30;

pub fn init(json: bool) {
    init_with(json, None);
}

/// As [`init`]; with `log_dir` = (directory, file name), the lines go to `<directory>/<name>.<date>`,
/// a new file each day (the last [`KEEP_LOG_FILES`] kept), instead of standard error.
pub fn init_with(json: bool, log_dir: Option<(&Path, &str)>) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("FLEET_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, ansi) = match log_dir {
        Some((dir, name)) => {
            // Daily files, the last 30 kept.
            let files = tracing_appender::rolling::Builder::new()
                .rotation(tracing_appender::rolling::Rotation::DAILY)
                .filename_prefix(name)
                .max_log_files(KEEP_LOG_FILES)
                .build(dir);
            match files {
                Ok(files) => (BoxMakeWriter::new(files), false),
                Err(e) => {
                    eprintln!(
                        "cannot write log files in {}: {e}; logging to standard error",
                        dir.display()
                    );
                    (BoxMakeWriter::new(std::io::stderr), false)
                }
            }
        }
        None => (
            BoxMakeWriter::new(std::io::stderr),
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
        ),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
