//! The Windows tier, first part: the agent built for Windows (`tests/wine/build`) runs under Wine, and
//! its registry and service code (winreg, windows-service: Windows' APIs, no tool output parsed) reads
//! a server prepared with Wine's own `reg` and `sc`. Wine is not Windows: it has no ENTSSO, no MSDTC
//! and no real PowerShell (its `powershell.exe` is a stub), which the assertions say where they meet it.
//!
//! `FLEET_WINE_BIN` names the folder `tests/wine/build` prints (default `target/wine/bin`). Without Wine
//! or that folder the test says so loudly and is skipped, unless `FLEET_REQUIRE_WINE` is set (CI).

use fleet_agent::config::written;
use fleet_tests::wine::{WineServer as Server, windows_bin_or_skip};

#[test]
fn the_windows_agent_reads_esso_from_the_registry_and_the_service_manager() {
    let Some(bin) = windows_bin_or_skip(&["fleet-agent.exe", "bcryptprimitives.dll"]) else {
        return;
    };
    let server = Server::new();
    // The agent's folder, as the install script lays it out: the program, its configuration.
    let agent = tempfile::tempdir().unwrap();
    for file in ["fleet-agent.exe", "bcryptprimitives.dll"] {
        std::fs::copy(bin.join(file), agent.path().join(file)).unwrap();
    }
    let config = written::Head {
        node: "sso-dev-01",
        coordinator: "https://127.0.0.1:1",
        state_dir: "state",
        ca: "ca.pem",
        cert: "agent.pem",
        key: "agent-key.pem",
        reconnect: None,
    };
    std::fs::write(agent.path().join("agent.toml"), config.render()).unwrap();
    let facts = || {
        let o = server.wine(
            &["fleet-agent.exe", "--config", "agent.toml", "--facts"],
            agent.path(),
        );
        let stdout = String::from_utf8_lossy(&o.stdout).to_string();
        assert_eq!(o.status.code(), Some(0), "{o:?}");
        stdout
    };

    // A bare server: no ESSO, no ENTSSO service.
    let bare = facts();
    for line in [
        "esso_version: (not installed)\n",
        "service: not-installed\n",
        "master_secret_server: false\n",
        "os: windows\n",
        "check.reboot_pending: ok\n",
    ] {
        assert!(bare.contains(line), "{line:?} in\n{bare}");
    }

    // ESSO 3.0.7.0 as KB 2908466 says it is recorded (the 32-bit view's Server value), the master
    // secret server's SSOSS key, BizTalk's key, and an ENTSSO service (stopped: Wine runs no ESSO).
    server.reg_add(
        r"HKLM\SOFTWARE\Microsoft\ENTSSO",
        Some(("Server", "3.0.7.0")),
        "/reg:32",
    );
    server.reg_add(r"HKLM\SOFTWARE\Microsoft\ENTSSO\SSOSS", None, "/reg:32");
    server.reg_add(
        r"HKLM\SOFTWARE\Microsoft\BizTalk Server\3.0",
        Some(("ProductVersion", "3.13.717.0")),
        "/reg:32",
    );
    server.run(&[
        "sc",
        "create",
        "ENTSSO",
        "binpath=",
        r"C:\windows\system32\notepad.exe",
    ]);
    let esso = facts();
    for line in [
        "esso_version: 3.0.7.0\n",
        "service: stopped\n",
        "products: biztalk\n",
        "master_secret_server: true\n",
        "biztalk_version: 3.13.717.0\n",
        // Wine has no MSDTC service: the check says so (a real server's is installed).
        "check.msdtc: FAILED the Distributed Transaction Coordinator (MSDTC) is not installed",
        "check.entsso: FAILED ENTSSO is stopped",
    ] {
        assert!(esso.contains(line), "{line:?} in\n{esso}");
    }

    // In the native view only (a 64-bit ESSO's own key), with Administration instead of Server.
    server.run(&[
        "reg",
        "delete",
        r"HKLM\SOFTWARE\Microsoft\ENTSSO",
        "/reg:32",
        "/f",
    ]);
    server.reg_add(
        r"HKLM\SOFTWARE\Microsoft\ENTSSO",
        Some(("Administration", "9.0.1865.0")),
        "/reg:64",
    );
    let native = facts();
    assert!(native.contains("esso_version: 9.0.1865.0\n"), "{native}");
    assert!(native.contains("master_secret_server: false\n"), "{native}");
}
