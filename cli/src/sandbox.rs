//! `souk sandbox payments`: a payment-provider SANDBOX as a process of its own (for a
//! second machine, a demo, or pointing `[payments] primary-url` at it). `souk dev`
//! starts two in process instead.

use anyhow::Context;
use souk_sandbox::payments::{Faults, PaymentSandbox, SandboxOptions, TOKENS};
use std::{net::SocketAddr, path::Path, process::ExitCode};

/// Serve until SIGINT/SIGTERM.
pub async fn payments(
    port: u16,
    provider_name: &str,
    fault_flags: &[String],
    credentials: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let mut faults = Faults::default();
    for flag in fault_flags {
        faults.set(flag).map_err(|e| anyhow::anyhow!("--fault {flag}: {e}"))?;
    }
    if provider_name.is_empty()
        || provider_name.len() > 64
        || !provider_name.bytes().all(|b| b.is_ascii_graphic())
    {
        anyhow::bail!("--provider-name must be 1–64 printable characters without spaces");
    }
    // The key is read from (or generated into) the file and never printed.
    let api_key = credentials
        .map(|path| {
            souk_sandbox::credentials::load_or_generate(path)
                .with_context(|| format!("sandbox credentials {}", path.display()))
        })
        .transpose()?;
    let sandbox = PaymentSandbox::start(SandboxOptions {
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        provider_name: provider_name.to_owned(),
        api_key,
        faults: faults.clone(),
    })
    .await
    .with_context(|| format!("starting the payment sandbox on 127.0.0.1:{port}"))?;
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stdout().lock(),
        "\n*** PAYMENT PROVIDER SANDBOX — not a real provider: no card is charged, no money moves ***\n\
         \x20 provider     {provider_name}\n\
         \x20 URL          {url}   (dialects /alpha/v1 and /beta; see {url}/)\n\
         \x20 tokens       {tokens}\n\
         \x20 credentials  {credentials}\n\
         \x20 faults       {faults}   (change them: PUT {url}/admin/faults)\n",
        url = sandbox.url(),
        tokens = TOKENS.join(", "),
        credentials =
            credentials.map_or("none required".to_owned(), |p| format!("from {} (not shown)", p.display())),
        faults = serde_json::to_string(&faults).unwrap_or_default(),
    );
    wait_for_signal().await?;
    sandbox.stop().await;
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = interrupt.recv() => {},
        _ = terminate.recv() => {},
    }
    Ok(())
}
