//! The Windows state the built-in actions read and change: registry keys and values, and services.
//! On Windows through the APIs ([`windows`]: `winreg` and `windows-service`): nothing is read from
//! reg.exe's or sc.exe's text, which Windows localizes. Elsewhere (the Linux tests) through stand-in
//! programs named in `[tools] reg` and `[tools] sc` that print reg.exe's and sc.exe's formats
//! ([`standin`]); the Windows agent never runs them, and refuses those keys.

#[cfg(not(windows))]
mod standin;
#[cfg(windows)]
mod windows;

use super::session::{Fail, Session};
use super::tools::Tool;

/// Which registry view: a 64-bit Windows keeps 32-bit programs' keys under `Wow6432Node`, where
/// KB 2908466 says ESSO's version is (`HKLM\SOFTWARE\Wow6432Node\Microsoft\ENTSSO`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegView {
    /// The 32-bit view (`KEY_WOW64_32KEY`; reg.exe's `/reg:32`).
    Wow32,
    /// The 64-bit view (`KEY_WOW64_64KEY`; reg.exe's own on 64-bit Windows), where 64-bit programs
    /// and Windows itself write.
    Native,
}

impl RegView {
    pub fn describe(self) -> &'static str {
        match self {
            RegView::Wow32 => "32-bit view",
            RegView::Native => "native view",
        }
    }
}

/// A Windows service's state (SERVICE_STATUS `dwCurrentState`), or not installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceState {
    Stopped,
    StartPending,
    StopPending,
    Running,
    ContinuePending,
    PausePending,
    Paused,
    NotInstalled,
}

impl ServiceState {
    /// The `service=` output value (the facts' words: running, stopped, start-pending, …).
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceState::Stopped => "stopped",
            ServiceState::StartPending => "start-pending",
            ServiceState::StopPending => "stop-pending",
            ServiceState::Running => "running",
            ServiceState::ContinuePending => "continue-pending",
            ServiceState::PausePending => "pause-pending",
            ServiceState::Paused => "paused",
            ServiceState::NotInstalled => "not-installed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceStatus {
    pub state: ServiceState,
    /// `WIN32_EXIT_CODE`: why a stopped service stopped (0: it was stopped, 1067: the process ended…).
    pub win32_exit_code: Option<u32>,
}

/// The tools the registry and services need: none on Windows (its APIs), the stand-ins elsewhere.
#[cfg(windows)]
pub const TOOLS: &[Tool] = &[];
#[cfg(not(windows))]
pub const TOOLS: &[Tool] = &[Tool::Sc, Tool::Reg];

/// ERROR_SERVICE_DOES_NOT_EXIST.
pub const SERVICE_DOES_NOT_EXIST: i32 = 1060;

impl Session<'_> {
    /// Whether `key` (`HKLM\…`) exists in `view`.
    pub(super) async fn reg_key_exists(&mut self, view: RegView, key: &str) -> Result<bool, Fail> {
        #[cfg(windows)]
        {
            let key = key.to_string();
            blocking(move || windows::key_exists(view, &key)).await
        }
        #[cfg(not(windows))]
        {
            standin::key_exists(self, view, key).await
        }
    }

    /// The value `name` of `key` as text (strings as they are, numbers in decimal); `None` when the
    /// key or the value is missing.
    pub(super) async fn reg_value(
        &mut self,
        view: RegView,
        key: &str,
        name: &str,
    ) -> Result<Option<String>, Fail> {
        #[cfg(windows)]
        {
            let (key, name) = (key.to_string(), name.to_string());
            blocking(move || windows::value(view, &key, &name)).await
        }
        #[cfg(not(windows))]
        {
            standin::value(self, view, key, name).await
        }
    }

    /// The first view (32-bit, then native) that has `key`'s value `name`.
    pub(super) async fn reg_value_any_view(
        &mut self,
        key: &str,
        name: &str,
    ) -> Result<Option<String>, Fail> {
        for view in [RegView::Wow32, RegView::Native] {
            if let Some(value) = self.reg_value(view, key, name).await? {
                return Ok(Some(value));
            }
        }
        Ok(None)
    }

    /// Whether either view has `key`.
    pub(super) async fn reg_key_exists_any_view(&mut self, key: &str) -> Result<bool, Fail> {
        for view in [RegView::Wow32, RegView::Native] {
            if self.reg_key_exists(view, key).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The service's state.
    pub(super) async fn service(&mut self, service: &str) -> Result<ServiceStatus, Fail> {
        #[cfg(windows)]
        let status = {
            let name = service.to_string();
            blocking(move || windows::service(&name)).await
        };
        #[cfg(not(windows))]
        let status = standin::service(self, service).await;
        status.map_err(|f| Fail::new(format!("the {service} service: {}", f.message)))
    }

    /// Asks the service controller to start the service (already running is fine).
    pub(super) async fn start_service(&mut self, service: &str) -> Result<(), Fail> {
        self.note(format!("starting the {service} service"), false)
            .await;
        #[cfg(windows)]
        {
            let name = service.to_string();
            blocking(move || windows::start(&name)).await
        }
        #[cfg(not(windows))]
        {
            standin::start(self, service).await
        }
    }

    /// Asks the service controller to stop the service (already stopped is fine).
    pub(super) async fn stop_service(&mut self, service: &str) -> Result<(), Fail> {
        self.note(format!("stopping the {service} service"), false)
            .await;
        #[cfg(windows)]
        {
            let name = service.to_string();
            blocking(move || windows::stop(&name)).await
        }
        #[cfg(not(windows))]
        {
            standin::stop(self, service).await
        }
    }
}

/// Runs a Windows API call off the async threads.
#[cfg(windows)]
async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, Fail> {
    match tokio::task::spawn_blocking(call).await {
        Ok(result) => result.map_err(Fail::new),
        Err(e) => Err(Fail::new(format!("a Windows API call failed: {e}"))),
    }
}
