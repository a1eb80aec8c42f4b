/* The Windows tier's stand-ins for the Windows tools the agent's BUILT-IN actions drive
 * (tests/tests/e2e/wine_builtins.rs), one program whose behaviour is chosen by its own executable name
 * (tests/wine/build compiles it once per name). They print what the real tools print, from the
 * recorded samples in node-agent/src/builtin/samples/:
 *
 *   powershell.exe ... -File <script> ...   the agent's shipped scripts: fitness.ps1 prints its
 *                                           `::output:: check.*` lines; backup-secret.ps1
 *                                           (-BackupFile F -InteropDll D) reads the password and the
 *                                           reminder on standard input and writes F
 *   ssomanage.exe -displaydb                ssomanage-displaydb.txt, the secret server being
 *                                           STANDIN_SECRET_SERVER; ESSO's 0xC0002A0F error when the
 *                                           ENTSSO service (asked through the service controller) is
 *                                           not running
 *   wevtutil.exe qe Application /q:<XPath> /rd:true /f:xml /c:<n>
 *                                           the ENTSSO events the stand-in service recorded
 *                                           (STANDIN_EVENTS) since the query's @SystemTime, newest
 *                                           first, in wevtutil's XML (wevtutil-entsso-events.xml)
 *   shutdown.exe /r /t <s> /c <comment> /d p:4:2
 *                                           logs only (the test "reboots" the Wine prefix itself)
 *   setup.exe <version>                     a product installer run by a configured install_sso:
 *                                           stops ENTSSO, writes the version in the registry's 32-bit
 *                                           view (KB 2908466: ENTSSO's Server and Administration),
 *                                           starts ENTSSO again unless it asks for a reboot; exits
 *                                           with STANDIN_SETUP_EXIT (0; 3010: a reboot is required)
 *   entsso-standin.exe <service> <log> [<events>]
 *                                           a Windows service (StartServiceCtrlDispatcher): a short
 *                                           START_PENDING, then RUNNING until stopped; on reaching
 *                                           RUNNING it records ESSO's event 10534 ("This computer is
 *                                           the master secret server.") in <events>
 *
 * Each appends to the log STANDIN_LOG (a Windows path; the service: its second argument) one line per
 * fact, tab-separated and written whole with one WriteFile on a file opened for appending:
 *   <tool> <pid> cmdline <raw command line, GetCommandLineW>
 *   <tool> <pid> stdin <what it read on standard input, line ends as \n>  (powershell's backup only)
 *   <tool> <pid> state <what it did>
 * Nothing read on standard input is ever printed to standard output or standard error.
 */
#include <windows.h>
#include <shellapi.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <wchar.h>

static char tool[MAX_PATH];
static char log_path[MAX_PATH * 2];
static int argc;
static char **argv;

static void out(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  fflush(stdout);
}

static void err(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fflush(stderr);
}

/* Appends from several processes are serialised by a mutex named for the log: a log line lost to two
 * appends landing at the same offset was seen once under load in the Windows tier (Wine writes an
 * append-only handle at the end of file it knows; whether that is atomic across processes is to
 * confirm). Held at most 10 s; a holder that died leaves it abandoned, which still grants it. */
static HANDLE lock_log(void) {
  HANDLE m = CreateMutexA(NULL, FALSE, "ssofleet-tests-log-append");
  if (m) WaitForSingleObject(m, 10000);
  return m;
}

static void unlock_log(HANDLE m) {
  if (!m) return;
  ReleaseMutex(m);
  CloseHandle(m);
}

static void append(const char *path, const char *text, size_t size) {
  if (!path[0]) return;
  HANDLE lock = lock_log();
  HANDLE f = CreateFileA(path, FILE_APPEND_DATA, FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE, NULL,
                         OPEN_ALWAYS, FILE_ATTRIBUTE_NORMAL, NULL);
  DWORD written = 0;
  if (f == INVALID_HANDLE_VALUE) {
    fprintf(stderr, "%s: cannot open %s: error %lu\n", tool, path, GetLastError());
  } else {
    if (!WriteFile(f, text, (DWORD)size, &written, NULL) || written != (DWORD)size)
      fprintf(stderr, "%s: cannot append to %s: error %lu\n", tool, path, GetLastError());
    FlushFileBuffers(f);
    CloseHandle(f);
  }
  unlock_log(lock);
}

/* One log line: `<tool>\t<pid>\t<kind>\t<text>`, line ends in `text` written as \n. */
static void log_line(const char *kind, const char *text) {
  static char line[16384];
  int n = snprintf(line, sizeof line, "%s\t%lu\t%s\t", tool, (unsigned long)GetCurrentProcessId(), kind);
  if (n < 0) return;
  size_t at = (size_t)n;
  for (const char *c = text; *c && at + 4 < sizeof line; c++) {
    if (*c == '\r') {
      line[at++] = '\\';
      line[at++] = 'r';
    } else if (*c == '\n') {
      line[at++] = '\\';
      line[at++] = 'n';
    } else {
      line[at++] = *c;
    }
  }
  line[at++] = '\n';
  append(log_path, line, at);
}

static void log_cmdline(void) {
  static char cmdline[8192];
  if (WideCharToMultiByte(CP_UTF8, 0, GetCommandLineW(), -1, cmdline, sizeof cmdline, NULL, NULL) <= 0)
    strcpy(cmdline, "?");
  log_line("cmdline", cmdline);
}

static void log_state(const char *fmt, ...) {
  char text[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(text, sizeof text, fmt, ap);
  va_end(ap);
  log_line("state", text);
}

static int env(const char *name, char *value, DWORD size) {
  DWORD n = GetEnvironmentVariableA(name, value, size);
  if (n == 0 || n >= size) {
    value[0] = 0;
    return 0;
  }
  return 1;
}

/* The value following `name` (case-insensitive), or NULL. */
static const char *arg_after(const char *name) {
  for (int i = 1; i + 1 < argc; i++)
    if (_stricmp(argv[i], name) == 0) return argv[i + 1];
  return NULL;
}

static int file_contains(const char *path, const char *needle) {
  FILE *f = fopen(path, "rb");
  if (!f) return 0;
  static char text[65536];
  size_t n = fread(text, 1, sizeof text - 1, f);
  fclose(f);
  text[n] = 0;
  return strstr(text, needle) != NULL;
}

/* Now, UTC, as the event log writes it: 2026-11-29T07:10:41.1234560Z. */
static void now_iso(char *buf, size_t size) {
  FILETIME ft;
  SYSTEMTIME st;
  GetSystemTimePreciseAsFileTime(&ft);
  FileTimeToSystemTime(&ft, &st);
  unsigned long long ticks = ((unsigned long long)ft.dwHighDateTime << 32) | ft.dwLowDateTime;
  snprintf(buf, size, "%04u-%02u-%02uT%02u:%02u:%02u.%07lluZ", st.wYear, st.wMonth, st.wDay, st.wHour, st.wMinute,
           st.wSecond, ticks % 10000000ULL);
}

/* ---- the service controller ---- */

static DWORD service_state(const char *name) {
  SC_HANDLE scm = OpenSCManagerA(NULL, NULL, SC_MANAGER_CONNECT);
  if (!scm) return 0;
  SC_HANDLE svc = OpenServiceA(scm, name, SERVICE_QUERY_STATUS);
  DWORD state = 0;
  SERVICE_STATUS status;
  if (svc && QueryServiceStatus(svc, &status)) state = status.dwCurrentState;
  if (svc) CloseServiceHandle(svc);
  CloseServiceHandle(scm);
  return state;
}

/* ---- powershell.exe ---- */

static int powershell(void) {
  log_cmdline();
  const char *script = arg_after("-File");
  if (!script) {
    err("-File is required\n");
    return 2;
  }
  const char *base = strrchr(script, '\\');
  base = base ? base + 1 : script;
  if (_stricmp(base, "fitness.ps1") == 0) {
    if (!file_contains(script, "IsInRole")) {
      err("not the agent's script: %s\n", script);
      return 2;
    }
    const char *group = arg_after("-SsoAdminGroup");
    const char *folder = arg_after("-BackupFolder");
    if (!folder || !arg_after("-MinFreeBytes")) {
      err("fitness.ps1: -BackupFolder and -MinFreeBytes are mandatory\n");
      return 1;
    }
    char user[256] = "?";
    DWORD size = sizeof user;
    GetUserNameA(user, &size);
    out("::output:: check.local_admin=ok %s\n", user);
    if (group) out("::output:: check.sso_admin=ok %s is in %s\n", user, group);
    ULARGE_INTEGER free_bytes;
    char root[4] = {folder[0], ':', '\\', 0};
    if (!GetDiskFreeSpaceExA(root, &free_bytes, NULL, NULL)) free_bytes.QuadPart = 0;
    out("::output:: check.backup_space=ok %llu bytes free on %s\n", free_bytes.QuadPart, root);
    return 0;
  }
  if (!file_contains(script, "ISSOConfigSS.BackupSecret")) {
    err("not the agent's script: %s\n", script);
    return 2;
  }
  const char *file = arg_after("-BackupFile");
  const char *interop = arg_after("-InteropDll");
  /* Standard input: the password, then the reminder, one line each. */
  static char input[4096];
  size_t got = 0;
  DWORD n;
  HANDLE in = GetStdHandle(STD_INPUT_HANDLE);
  while (got + 1 < sizeof input && ReadFile(in, input + got, (DWORD)(sizeof input - 1 - got), &n, NULL) && n > 0)
    got += n;
  input[got] = 0;
  log_line("stdin", input);
  if (!file || !interop) {
    err("backup-secret.ps1: -BackupFile and -InteropDll are mandatory\n");
    return 1;
  }
  char *eol = strpbrk(input, "\r\n");
  if (eol == input || got == 0) {
    err("no backup password on standard input\n");
    return 2;
  }
  if (GetFileAttributesA(interop) == INVALID_FILE_ATTRIBUTES) {
    err("ISSOConfigSS.BackupSecret failed: 0x80070002 Could not load file or assembly '%s'.\n", interop);
    return 1;
  }
  FILE *f = fopen(file, "wb");
  if (!f) {
    err("ISSOConfigSS.BackupSecret failed: 0xC0002A07 cannot write %s\n", file);
    return 1;
  }
  fputs("simulated master secret backup\r\n", f);
  fclose(f);
  out("::progress:: 90 ISSOConfigSS.BackupSecret wrote the backup\n");
  return 0;
}

/* ---- ssomanage.exe ---- */

static int ssomanage(void) {
  log_cmdline();
  if (argc < 2 || _stricmp(argv[1], "-displaydb") != 0) {
    out("Usage: ssomanage -displaydb\n");
    return 1;
  }
  char computer[256] = "?";
  DWORD size = sizeof computer;
  GetComputerNameA(computer, &size);
  if (service_state("ENTSSO") != SERVICE_RUNNING) {
    out("ERROR: 0xC0002A0F : Could not contact the SSO server '%s'. Check that the SSO service is running on "
        "that server.\n",
        computer);
    return 1;
  }
  char server[256];
  if (!env("STANDIN_SECRET_SERVER", server, sizeof server)) strcpy(server, "DSITEAMSRV");
  out("Using SSO server on this computer\n"
      "\n"
      "SQL Server : dsiteamsrv\n"
      "SSO database : SSODB\n"
      "SSO secret server name : %s\n"
      "SSO Admin account : SSO Administrators\n"
      "SSO Affiliate Admin account : SSO Affiliate Administrators\n"
      "Size of audit table for deleted ... : 1000\n"
      "Size of audit table for deleted ... : 1000\n"
      "Size of audit table for external... : 1000\n"
      "Ticket timeout (in minutes) : 2\n"
      "Credential cache timeout (in min... : 60\n"
      "\n"
      "Global flags -\n"
      "SSO enabled : Yes\n"
      "Tickets allowed : No\n"
      "Allow host initiated SSO : No\n"
      "\n"
      "Password Sync -\n"
      "From Windows to adapters : No\n"
      "From adapters to SSO database (p... : No\n"
      "From adapters to Windows (full) : No\n"
      "----------------------------------------------------------------------\n",
      server);
  return 0;
}

/* ---- wevtutil.exe ---- */

static int wevtutil(void) {
  log_cmdline();
  if (argc < 3 || _stricmp(argv[1], "qe") != 0 || _stricmp(argv[2], "Application") != 0) {
    err("The parameter is incorrect.\n");
    return 87;
  }
  const char *query = NULL;
  int xml = 0, newest_first = 0;
  long count = -1;
  for (int i = 3; i < argc; i++) {
    if (_strnicmp(argv[i], "/q:", 3) == 0) query = argv[i] + 3;
    else if (_stricmp(argv[i], "/f:xml") == 0) xml = 1;
    else if (_stricmp(argv[i], "/rd:true") == 0) newest_first = 1;
    else if (_strnicmp(argv[i], "/c:", 3) == 0) count = strtol(argv[i] + 3, NULL, 10);
  }
  if (!xml || !newest_first || !query || !strstr(query, "Provider[@Name='ENTSSO']")) {
    err("unsupported by the stand-in: wevtutil needs /q:<ENTSSO query> /rd:true /f:xml\n");
    return 87;
  }
  /* The query's lower bound: TimeCreated[@SystemTime>='2026-11-29T07:00:00.000Z']; compared to the
   * millisecond (the event's own time has seven digits). */
  char since[32] = "";
  const char *at = strstr(query, "@SystemTime>='");
  if (at) {
    at += strlen("@SystemTime>='");
    size_t len = strcspn(at, "'");
    if (len >= sizeof since) len = sizeof since - 1;
    memcpy(since, at, len);
    since[len] = 0;
  }
  char events[MAX_PATH * 2];
  if (!env("STANDIN_EVENTS", events, sizeof events)) return 0;
  FILE *f = fopen(events, "rb");
  if (!f) return 0;
  static char lines[512][64];
  int total = 0;
  while (total < 512 && fgets(lines[total], sizeof lines[total], f)) {
    lines[total][strcspn(lines[total], "\r\n")] = 0;
    if (lines[total][0]) total++;
  }
  fclose(f);
  char computer[256] = "?";
  DWORD size = sizeof computer;
  GetComputerNameExA(ComputerNameDnsFullyQualified, computer, &size);
  long printed = 0;
  for (int i = total - 1; i >= 0 && (count < 0 || printed < count); i--) {
    char time[40];
    unsigned id = 0;
    if (sscanf(lines[i], "%39s %u", time, &id) != 2) continue;
    if (since[0] && strncmp(time, since, 23) < 0) continue;
    out("<Event xmlns='http://schemas.microsoft.com/win/2004/08/events/event'><System><Provider Name='ENTSSO'/>"
        "<EventID Qualifiers='16384'>%u</EventID><Level>4</Level><Task>1</Task><Keywords>0x80000000000000</Keywords>"
        "<TimeCreated SystemTime='%s'/><EventRecordID>%d</EventRecordID><Channel>Application</Channel>"
        "<Computer>%s</Computer><Security/></System><EventData><Data>SSO AUDIT Function: ... This computer is the "
        "master secret server.</Data></EventData></Event>\n",
        id, time, 48200 + i, computer);
    printed++;
  }
  return 0;
}

/* ---- shutdown.exe ---- */

static int shutdown_exe(void) {
  log_cmdline();
  return 0;
}

/* ---- setup.exe (a configured install_sso) ---- */

static int set_version(const char *version) {
  HKEY key;
  LONG r = RegCreateKeyExA(HKEY_LOCAL_MACHINE, "SOFTWARE\\Microsoft\\ENTSSO", 0, NULL, 0,
                           KEY_SET_VALUE | KEY_WOW64_32KEY, NULL, &key, NULL);
  if (r != ERROR_SUCCESS) return (int)r;
  for (const char *name = "Server"; name; name = strcmp(name, "Server") == 0 ? "Administration" : NULL) {
    r = RegSetValueExA(key, name, 0, REG_SZ, (const BYTE *)version, (DWORD)strlen(version) + 1);
    if (r != ERROR_SUCCESS) break;
  }
  RegCloseKey(key);
  return (int)r;
}

static int setup(void) {
  log_cmdline();
  if (argc < 2) {
    err("usage: setup.exe <version>\n");
    return 1602;
  }
  /* ESSO records a four-part build (3.0.7 -> 3.0.7.0). */
  int dots = 0;
  for (const char *c = argv[1]; *c; c++) dots += *c == '.';
  char version[64];
  snprintf(version, sizeof version, "%s%s", argv[1], dots == 2 ? ".0" : "");
  char code_text[16];
  int code = env("STANDIN_SETUP_EXIT", code_text, sizeof code_text) ? atoi(code_text) : 0;
  out("::progress:: 10 stopping ENTSSO\n");
  SC_HANDLE scm = OpenSCManagerA(NULL, NULL, SC_MANAGER_CONNECT);
  SC_HANDLE svc = scm ? OpenServiceA(scm, "ENTSSO", SERVICE_STOP | SERVICE_START | SERVICE_QUERY_STATUS) : NULL;
  if (!svc) {
    err("cannot open the ENTSSO service: %lu\n", GetLastError());
    return 1603;
  }
  SERVICE_STATUS status;
  if (!ControlService(svc, SERVICE_CONTROL_STOP, &status) && GetLastError() != ERROR_SERVICE_NOT_ACTIVE) {
    err("cannot stop ENTSSO: %lu\n", GetLastError());
    return 1603;
  }
  for (int i = 0; i < 200 && QueryServiceStatus(svc, &status) && status.dwCurrentState != SERVICE_STOPPED; i++)
    Sleep(50);
  if (status.dwCurrentState != SERVICE_STOPPED) {
    err("ENTSSO did not stop (state %lu)\n", status.dwCurrentState);
    return 1603;
  }
  log_state("stopped ENTSSO");
  out("::progress:: 50 installing ESSO %s\n", version);
  int r = set_version(version);
  if (r != 0) {
    err("cannot write ESSO's version in the registry: %d\n", r);
    return 1603;
  }
  log_state("installed %s", version);
  if (code == 3010) {
    /* Files in use: the new ENTSSO starts with the next boot. */
    out("::progress:: 100 installed; restart the computer to finish\n");
  } else {
    if (!StartServiceA(svc, 0, NULL)) {
      err("cannot start ENTSSO: %lu\n", GetLastError());
      return 1603;
    }
    log_state("started ENTSSO");
    out("::progress:: 100 installed\n");
  }
  CloseServiceHandle(svc);
  CloseServiceHandle(scm);
  return code;
}

/* ---- entsso-standin.exe: a Windows service ---- */

static SERVICE_STATUS_HANDLE status_handle;
static SERVICE_STATUS service_status;
static HANDLE stop_event;
static char service_name[256];
static char events_path[MAX_PATH * 2];

static void report(DWORD state, DWORD wait_hint) {
  static DWORD checkpoint = 1;
  service_status.dwServiceType = SERVICE_WIN32_OWN_PROCESS;
  service_status.dwCurrentState = state;
  service_status.dwControlsAccepted =
      state == SERVICE_RUNNING ? SERVICE_ACCEPT_STOP | SERVICE_ACCEPT_SHUTDOWN : 0;
  service_status.dwWin32ExitCode = NO_ERROR;
  service_status.dwWaitHint = wait_hint;
  service_status.dwCheckPoint = (state == SERVICE_RUNNING || state == SERVICE_STOPPED) ? 0 : checkpoint++;
  SetServiceStatus(status_handle, &service_status);
}

static DWORD WINAPI control(DWORD code, DWORD type, LPVOID data, LPVOID context) {
  (void)type;
  (void)data;
  (void)context;
  switch (code) {
  case SERVICE_CONTROL_STOP:
  case SERVICE_CONTROL_SHUTDOWN:
    report(SERVICE_STOP_PENDING, 2000);
    SetEvent(stop_event);
    return NO_ERROR;
  case SERVICE_CONTROL_INTERROGATE:
    return NO_ERROR;
  default:
    return ERROR_CALL_NOT_IMPLEMENTED;
  }
}

static void WINAPI service_main(DWORD count, LPSTR *args) {
  (void)count;
  (void)args;
  status_handle = RegisterServiceCtrlHandlerExA(service_name, control, NULL);
  if (!status_handle) return;
  stop_event = CreateEventA(NULL, TRUE, FALSE, NULL);
  /* A short start-pending phase, as ENTSSO's own start (it loads the master secret). */
  report(SERVICE_START_PENDING, 3000);
  log_state("start-pending %s", service_name);
  Sleep(1500);
  if (events_path[0]) {
    char line[64];
    now_iso(line, sizeof line - 8);
    strcat(line, " 10534\n");
    append(events_path, line, strlen(line));
  }
  report(SERVICE_RUNNING, 0);
  log_state("running %s", service_name);
  WaitForSingleObject(stop_event, INFINITE);
  log_state("stopped %s", service_name);
  report(SERVICE_STOPPED, 0);
}

static int service(void) {
  if (argc < 3) {
    err("usage: entsso-standin.exe <service> <log> [<events>]: a service, started by the service controller\n");
    return 1;
  }
  snprintf(service_name, sizeof service_name, "%s", argv[1]);
  snprintf(log_path, sizeof log_path, "%s", argv[2]);
  if (argc > 3) snprintf(events_path, sizeof events_path, "%s", argv[3]);
  log_cmdline();
  SERVICE_TABLE_ENTRYA table[] = {{service_name, service_main}, {NULL, NULL}};
  if (!StartServiceCtrlDispatcherA(table)) {
    err("StartServiceCtrlDispatcher: %lu (run it as a service)\n", GetLastError());
    return 1;
  }
  return 0;
}

int main(void) {
  /* The arguments as Windows splits them (CommandLineToArgvW), in UTF-8. */
  int wargc;
  wchar_t **wargv = CommandLineToArgvW(GetCommandLineW(), &wargc);
  if (!wargv) return 3;
  argc = wargc;
  argv = calloc((size_t)argc + 1, sizeof *argv);
  for (int i = 0; i < argc; i++) {
    int len = WideCharToMultiByte(CP_UTF8, 0, wargv[i], -1, NULL, 0, NULL, NULL);
    argv[i] = malloc((size_t)len);
    WideCharToMultiByte(CP_UTF8, 0, wargv[i], -1, argv[i], len, NULL, NULL);
  }
  /* The tool: this executable's own name, without folder or `.exe`, in lower case. */
  char exe[MAX_PATH * 2];
  GetModuleFileNameA(NULL, exe, sizeof exe);
  const char *base = strrchr(exe, '\\');
  base = base ? base + 1 : exe;
  snprintf(tool, sizeof tool, "%s", base);
  char *dot = strrchr(tool, '.');
  if (dot && _stricmp(dot, ".exe") == 0) *dot = 0;
  _strlwr(tool);
  env("STANDIN_LOG", log_path, sizeof log_path);
  if (strcmp(tool, "powershell") == 0) return powershell();
  if (strcmp(tool, "ssomanage") == 0) return ssomanage();
  if (strcmp(tool, "wevtutil") == 0) return wevtutil();
  if (strcmp(tool, "shutdown") == 0) return shutdown_exe();
  if (strcmp(tool, "setup") == 0) return setup();
  if (strcmp(tool, "entsso-standin") == 0) return service();
  err("%s: no such stand-in (powershell, ssomanage, wevtutil, shutdown, setup, entsso-standin)\n", tool);
  return 9009;
}
