/* The Windows tier's stand-in for the ESSO tools (tests/tests/e2e/wine_agent.rs): one program, its
 * behaviour chosen by its first argument, speaking the agent's line protocol on standard output
 * (`::progress:: <pct> <msg>`, `::output:: key=value`), as tests/fixtures/esso-* do on Linux.
 *
 *   esso-fixture.exe facts                      ::output:: version=, service=running, products=biztalk
 *   esso-fixture.exe backup -backupSecret FILE  reads the password on standard input, writes FILE
 *   esso-fixture.exe install VERSION            "installs" VERSION (FIXTURE_SETUP_MS: takes that long)
 *   esso-fixture.exe verify                     ::output:: version=<installed>, service=running
 *   esso-fixture.exe tree VERSION               an install that starts a grandchild and never ends:
 *                                               starts `esso-fixture.exe sleeper` (FIXTURE_TREE_MARK
 *                                               on its command line), prints ::output:: grandchild=<pid>,
 *                                               then sleeps (FIXTURE_SETUP_MS, else 120 s)
 *   esso-fixture.exe sleeper MARK               the grandchild: rewrites FIXTURE_HEARTBEAT (a Windows
 *                                               path) with a counter every 100 ms, for 120 s at most
 *
 * The simulated ESSO home is FIXTURE_HOME (a Windows path; its `version` file holds the installed
 * version). Every run but `facts` appends two lines to FIXTURE_LOG (a Windows path), each written
 * whole with one WriteFile on a file opened for appending:
 *   <100 ns ticks since 1601> <pid> <mode> start|end <raw command line (GetCommandLineW)>
 */
#include <windows.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void out(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  /* The agent reads lines as they come; a closed pipe (the agent gone) is no reason to stop. */
  fflush(stdout);
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

static void log_line(const char *mode, const char *what) {
  char path[MAX_PATH * 2];
  DWORD n = GetEnvironmentVariableA("FIXTURE_LOG", path, sizeof path);
  if (n == 0 || n >= sizeof path) return;
  FILETIME ft;
  GetSystemTimePreciseAsFileTime(&ft);
  unsigned long long ticks = ((unsigned long long)ft.dwHighDateTime << 32) | ft.dwLowDateTime;
  char cmdline[8192];
  int len = WideCharToMultiByte(CP_UTF8, 0, GetCommandLineW(), -1, cmdline, sizeof cmdline, NULL, NULL);
  if (len <= 0) strcpy(cmdline, "?");
  char line[8400];
  int size = snprintf(line, sizeof line, "%llu %lu %s %s %s\n", ticks, (unsigned long)GetCurrentProcessId(),
                      mode, what, cmdline);
  if (size < 0 || size >= (int)sizeof line) size = (int)strlen(line);
  HANDLE lock = lock_log();
  HANDLE f = CreateFileA(path, FILE_APPEND_DATA, FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE,
                         NULL, OPEN_ALWAYS, FILE_ATTRIBUTE_NORMAL, NULL);
  DWORD written = 0;
  if (f == INVALID_HANDLE_VALUE) {
    fprintf(stderr, "esso-fixture: cannot open FIXTURE_LOG %s: error %lu\n", path, GetLastError());
  } else {
    if (!WriteFile(f, line, (DWORD)size, &written, NULL) || written != (DWORD)size)
      fprintf(stderr, "esso-fixture: cannot append to FIXTURE_LOG %s: error %lu\n", path, GetLastError());
    FlushFileBuffers(f);
    CloseHandle(f);
  }
  unlock_log(lock);
}

/* FIXTURE_HOME\<name>, or 0 when FIXTURE_HOME is not set. */
static int home_file(const char *name, char *path, size_t size) {
  char home[MAX_PATH * 2];
  DWORD n = GetEnvironmentVariableA("FIXTURE_HOME", home, sizeof home);
  if (n == 0 || n >= sizeof home) return 0;
  snprintf(path, size, "%s\\%s", home, name);
  return 1;
}

static void installed_version(char *version, size_t size) {
  char path[MAX_PATH * 3];
  version[0] = 0;
  if (!home_file("version", path, sizeof path)) return;
  FILE *f = fopen(path, "r");
  if (!f) return;
  if (!fgets(version, (int)size, f)) version[0] = 0;
  fclose(f);
  version[strcspn(version, "\r\n")] = 0;
}

static int facts(void) {
  char version[128];
  out("::progress:: 50 querying the ENTSSO service\n");
  installed_version(version, sizeof version);
  out("::output:: version=%s\n", version);
  out("::output:: service=running\n");
  out("::output:: products=biztalk\n");
  out("::progress:: 100 done\n");
  return 0;
}

static int backup(int argc, char **argv) {
  if (argc < 4 || strcmp(argv[2], "-backupSecret") != 0) {
    fprintf(stderr, "usage: esso-fixture backup -backupSecret <file>\n");
    return 2;
  }
  char password[512];
  if (!fgets(password, sizeof password, stdin)) {
    fprintf(stderr, "no password on standard input\n");
    return 1;
  }
  password[strcspn(password, "\r\n")] = 0;
  if (strlen(password) < 7) {
    fprintf(stderr, "0xC0002A54: the password must be at least 7 characters\n");
    return 1;
  }
  log_line("backup", "start");
  out("::progress:: 50 backing up the master secret\n");
  FILE *f = fopen(argv[3], "w");
  if (!f) {
    fprintf(stderr, "cannot write %s\n", argv[3]);
    log_line("backup", "end");
    return 1;
  }
  fprintf(f, "simulated ESSO master secret backup (Windows fixture, pid %lu)\n",
          (unsigned long)GetCurrentProcessId());
  fclose(f);
  out("The operation completed successfully.\n");
  log_line("backup", "end");
  return 0;
}

static int install(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: esso-fixture install <version>\n");
    return 2;
  }
  const char *version = argv[2];
  log_line("install", "start");
  out("::progress:: 10 starting setup of ESSO %s\n", version);
  char ms_text[32];
  DWORD n = GetEnvironmentVariableA("FIXTURE_SETUP_MS", ms_text, sizeof ms_text);
  if (n > 0 && n < sizeof ms_text) {
    DWORD quarter = (DWORD)strtoul(ms_text, NULL, 10) / 4;
    int percent;
    for (percent = 30; percent <= 90; percent += 20) {
      Sleep(quarter);
      out("::progress:: %d installing Enterprise Single Sign-On\n", percent);
    }
  }
  char path[MAX_PATH * 3];
  if (home_file("version", path, sizeof path)) {
    FILE *f = fopen(path, "w");
    if (!f) {
      fprintf(stderr, "cannot write %s\n", path);
      log_line("install", "end");
      return 1;
    }
    fprintf(f, "%s\n", version);
    fclose(f);
  }
  out("::progress:: 100 installed\n");
  log_line("install", "end");
  return 0;
}

static int verify(void) {
  char version[128];
  log_line("verify", "start");
  installed_version(version, sizeof version);
  out("::output:: version=%s\n", version);
  out("::output:: service=running\n");
  log_line("verify", "end");
  return 0;
}

static DWORD setup_ms(DWORD otherwise) {
  char ms_text[32];
  DWORD n = GetEnvironmentVariableA("FIXTURE_SETUP_MS", ms_text, sizeof ms_text);
  if (n == 0 || n >= sizeof ms_text) return otherwise;
  return (DWORD)strtoul(ms_text, NULL, 10);
}

/* The step's program, which starts a copy of itself (not sharing its pipes) and outlives the step's
 * timeout: only ending the step's whole process tree (a job object) ends the grandchild. */
static int tree(int argc, char **argv) {
  (void)argc;
  (void)argv;
  log_line("tree", "start");
  out("::progress:: 10 starting a grandchild\n");
  wchar_t self[MAX_PATH * 2];
  DWORD n = GetModuleFileNameW(NULL, self, MAX_PATH * 2);
  if (n == 0 || n >= MAX_PATH * 2) {
    fprintf(stderr, "cannot read my own path\n");
    log_line("tree", "end");
    return 1;
  }
  wchar_t mark[256];
  n = GetEnvironmentVariableW(L"FIXTURE_TREE_MARK", mark, 256);
  if (n == 0 || n >= 256) wcscpy(mark, L"-");
  wchar_t cmdline[MAX_PATH * 2 + 300];
  swprintf(cmdline, sizeof cmdline / sizeof cmdline[0], L"\"%ls\" sleeper %ls", self, mark);
  STARTUPINFOW si;
  PROCESS_INFORMATION pi;
  ZeroMemory(&si, sizeof si);
  si.cb = sizeof si;
  if (!CreateProcessW(NULL, cmdline, NULL, NULL, FALSE, 0, NULL, NULL, &si, &pi)) {
    fprintf(stderr, "cannot start the grandchild: error %lu\n", (unsigned long)GetLastError());
    log_line("tree", "end");
    return 1;
  }
  out("::output:: grandchild=%lu\n", (unsigned long)pi.dwProcessId);
  CloseHandle(pi.hThread);
  CloseHandle(pi.hProcess);
  Sleep(setup_ms(120000));
  out("::progress:: 100 done\n");
  log_line("tree", "end");
  return 0;
}

static int sleeper(void) {
  char path[MAX_PATH * 2];
  DWORD n = GetEnvironmentVariableA("FIXTURE_HEARTBEAT", path, sizeof path);
  int have_path = n > 0 && n < sizeof path;
  log_line("sleeper", "start");
  unsigned beat;
  for (beat = 1; beat <= 1200; beat++) {
    if (have_path) {
      FILE *f = fopen(path, "w");
      if (f) {
        fprintf(f, "%u\n", beat);
        fclose(f);
      }
    }
    Sleep(100);
  }
  log_line("sleeper", "end");
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: esso-fixture facts|backup|install|verify ...\n");
    return 2;
  }
  if (strcmp(argv[1], "facts") == 0) return facts();
  if (strcmp(argv[1], "backup") == 0) return backup(argc, argv);
  if (strcmp(argv[1], "install") == 0) return install(argc, argv);
  if (strcmp(argv[1], "verify") == 0) return verify();
  if (strcmp(argv[1], "tree") == 0) return tree(argc, argv);
  if (strcmp(argv[1], "sleeper") == 0) return sleeper();
  fprintf(stderr, "unknown mode %s\n", argv[1]);
  return 2;
}
