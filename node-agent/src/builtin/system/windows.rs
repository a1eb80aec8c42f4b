//! The registry and the service controller through Windows' APIs: `winreg` (RegOpenKeyExW,
//! RegQueryValueExW) and `windows-service` (OpenSCManagerW, QueryServiceStatusEx, StartServiceW,
//! ControlService). Errors are told by their Win32 codes, never by localized text.

use std::io;

use windows_service::service::{ServiceAccess, ServiceExitCode, ServiceState as WinState};
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};
use winreg::RegKey;
use winreg::enums::{
    HKEY_LOCAL_MACHINE, KEY_QUERY_VALUE, KEY_WOW64_32KEY, KEY_WOW64_64KEY, RegType,
};

use super::{RegView, SERVICE_DOES_NOT_EXIST, ServiceState, ServiceStatus};

const ERROR_SERVICE_ALREADY_RUNNING: i32 = 1056;
const ERROR_SERVICE_NOT_ACTIVE: i32 = 1062;

/// `HKLM\SOFTWARE\…` opened in `view`; `None` when it does not exist.
fn open(view: RegView, key: &str) -> Result<Option<RegKey>, String> {
    let path = key
        .strip_prefix(r"HKLM\")
        .ok_or_else(|| format!("{key}: only HKLM keys are read"))?;
    let flags = KEY_QUERY_VALUE
        | match view {
            RegView::Wow32 => KEY_WOW64_32KEY,
            RegView::Native => KEY_WOW64_64KEY,
        };
    match RegKey::predef(HKEY_LOCAL_MACHINE).open_subkey_with_flags(path, flags) {
        Ok(k) => Ok(Some(k)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{key} ({}): {e}", view.describe())),
    }
}

pub(super) fn key_exists(view: RegView, key: &str) -> Result<bool, String> {
    Ok(open(view, key)?.is_some())
}

pub(super) fn value(view: RegView, key: &str, name: &str) -> Result<Option<String>, String> {
    let Some(k) = open(view, key)? else {
        return Ok(None);
    };
    let raw = match k.get_raw_value(name) {
        Ok(raw) => raw,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{key}\\{name} ({}): {e}", view.describe())),
    };
    let text = match raw.vtype {
        RegType::REG_DWORD => k.get_value::<u32, _>(name).map(|n| n.to_string()),
        RegType::REG_QWORD => k.get_value::<u64, _>(name).map(|n| n.to_string()),
        RegType::REG_MULTI_SZ => k.get_value::<Vec<String>, _>(name).map(|v| v.join(",")),
        _ => k.get_value::<String, _>(name),
    };
    text.map(Some)
        .map_err(|e| format!("{key}\\{name} ({}): {e}", view.describe()))
}

fn manager() -> Result<ServiceManager, String> {
    ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)
        .map_err(|e| format!("cannot open the service control manager: {}", described(&e)))
}

fn win32_code(e: &windows_service::Error) -> Option<i32> {
    match e {
        windows_service::Error::Winapi(io) => io.raw_os_error(),
        _ => None,
    }
}

fn described(e: &windows_service::Error) -> String {
    match e {
        windows_service::Error::Winapi(io) => io.to_string(),
        other => other.to_string(),
    }
}

pub(super) fn service(name: &str) -> Result<ServiceStatus, String> {
    let service = match manager()?.open_service(name, ServiceAccess::QUERY_STATUS) {
        Ok(s) => s,
        Err(e) if win32_code(&e) == Some(SERVICE_DOES_NOT_EXIST) => {
            return Ok(ServiceStatus {
                state: ServiceState::NotInstalled,
                win32_exit_code: None,
            });
        }
        Err(e) => return Err(described(&e)),
    };
    let status = service.query_status().map_err(|e| described(&e))?;
    Ok(ServiceStatus {
        state: match status.current_state {
            WinState::Stopped => ServiceState::Stopped,
            WinState::StartPending => ServiceState::StartPending,
            WinState::StopPending => ServiceState::StopPending,
            WinState::Running => ServiceState::Running,
            WinState::ContinuePending => ServiceState::ContinuePending,
            WinState::PausePending => ServiceState::PausePending,
            WinState::Paused => ServiceState::Paused,
        },
        win32_exit_code: match status.exit_code {
            ServiceExitCode::Win32(code) => Some(code),
            ServiceExitCode::ServiceSpecific(_) => None,
        },
    })
}

pub(super) fn start(name: &str) -> Result<(), String> {
    let service = manager()?
        .open_service(name, ServiceAccess::START | ServiceAccess::QUERY_STATUS)
        .map_err(|e| format!("cannot open the {name} service: {}", described(&e)))?;
    match service.start::<&str>(&[]) {
        Ok(()) => Ok(()),
        Err(e) if win32_code(&e) == Some(ERROR_SERVICE_ALREADY_RUNNING) => Ok(()),
        Err(e) => Err(format!(
            "the {name} service did not start: {}",
            described(&e)
        )),
    }
}

pub(super) fn stop(name: &str) -> Result<(), String> {
    let service = manager()?
        .open_service(name, ServiceAccess::STOP | ServiceAccess::QUERY_STATUS)
        .map_err(|e| format!("cannot open the {name} service: {}", described(&e)))?;
    match service.stop() {
        Ok(_) => Ok(()),
        Err(e) if win32_code(&e) == Some(ERROR_SERVICE_NOT_ACTIVE) => Ok(()),
        Err(e) => Err(format!(
            "the {name} service did not stop: {}",
            described(&e)
        )),
    }
}
