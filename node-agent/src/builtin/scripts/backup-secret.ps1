# ssofleet: backs up Enterprise Single Sign-On's master secret through ISSOConfigSS.BackupSecret
# (his/esso/issoconfigss-backupsecret-method.md: BackupSecret(backupFile, filePassword,
# filePasswordReminder)), the documented route that needs no one at a prompt. The password and the
# reminder arrive on standard input, one line each: they never appear on a command line or in a log.
# Exit 0: the backup file is written. Otherwise the error's HRESULT is printed as 0x........ on standard
# error, where the agent maps ESSO's codes (0xC0002Axx) to their meaning.
param(
    [Parameter(Mandatory = $true)][string]$BackupFile,
    [Parameter(Mandatory = $true)][string]$InteropDll
)
$ErrorActionPreference = 'Stop'
# The agent writes UTF-8; [Console]::In would decode with the console's code page and turn a non-ASCII
# password into another one, making the backup unusable.
$stdin = New-Object IO.StreamReader([Console]::OpenStandardInput(), (New-Object Text.UTF8Encoding $false))
$password = $stdin.ReadLine()
$reminder = $stdin.ReadLine()
if ([string]::IsNullOrEmpty($password)) {
    [Console]::Error.WriteLine('no backup password on standard input')
    exit 2
}
try {
    # To confirm on a real server: the interop assembly's place (the ESSO folder) and the class that
    # implements ISSOConfigSS (SSOConfigSS).
    Add-Type -Path $InteropDll
    $ss = New-Object Microsoft.EnterpriseSingleSignOn.Interop.SSOConfigSS
    $ss.BackupSecret($BackupFile, $password, $reminder)
    Write-Output "::progress:: 90 ISSOConfigSS.BackupSecret wrote the backup"
    exit 0
}
catch {
    $e = $_.Exception
    while ($e.InnerException) { $e = $e.InnerException }
    [Console]::Error.WriteLine(('ISSOConfigSS.BackupSecret failed: 0x{0:X8} {1}' -f $e.HResult, $e.Message))
    exit 1
}
