//! `export` and `import`: conversations as JSON Lines, gzip-compressed when the file ends in `.gz`.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use agent_server::config::Config;
use agent_server::portability;

use super::fail;

pub async fn export(config: &Config, tenant: Option<String>, out: Option<PathBuf>, with_secrets: bool) -> ExitCode {
    let tenant = match tenant.map(agent_server::ids::TenantId::parse).transpose() {
        Ok(t) => t,
        Err(e) => return fail(format!("--tenant: {e}")),
    };
    let store = match agent_server::store::open(&config.storage, config.retention).await {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let mut writer: Box<dyn Write> = match &out {
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
        Some(path) => match agent_server::private_file::create(path) {
            Ok(f) if path.extension().is_some_and(|e| e == "gz") => {
                Box::new(flate2::write::GzEncoder::new(std::io::BufWriter::new(f), flate2::Compression::default()))
            }
            Ok(f) => Box::new(std::io::BufWriter::new(f)),
            Err(e) => return fail(format!("cannot create {}: {e}", path.display())),
        },
    };
    let bar = portability::progress("exporting");
    let result = portability::export(&*store, tenant.as_ref(), &mut writer, &bar, with_secrets).await;
    bar.finish_and_clear();
    drop(writer);
    match result {
        Ok(c) => {
            eprintln!(
                "exported {} sessions, {} messages and {} agents from {}",
                c.sessions,
                c.messages,
                c.agents,
                store.describe()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

pub async fn import(config: &Config, file: PathBuf) -> ExitCode {
    let store = match agent_server::store::open(&config.storage, config.retention).await {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let f = match std::fs::File::open(&file) {
        Ok(f) => f,
        Err(e) => return fail(format!("cannot open {}: {e}", file.display())),
    };
    let mut reader: Box<dyn BufRead> = if file.extension().is_some_and(|e| e == "gz") {
        Box::new(std::io::BufReader::new(flate2::read::GzDecoder::new(f)))
    } else {
        Box::new(std::io::BufReader::new(f))
    };
    let bar = portability::progress("importing");
    let result = portability::import(&*store, &mut reader, &bar).await;
    bar.finish_and_clear();
    match result {
        Ok(c) => {
            println!(
                "imported {} sessions, {} messages and {} agents into {} ({} already stored)",
                c.sessions,
                c.messages,
                c.agents,
                store.describe(),
                c.existing
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}
