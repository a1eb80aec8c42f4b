# ssofleet: the preflight fitness checks that need the caller's Windows identity or a drive (issue 19,
# ESSO.md): backing up the master secret needs "an SSO administrator and a local administrator"
# (biztalk/core/how-to-back-up-the-master-secret.md), and the backup is written to this server's disk
# first. Prints the line protocol's `::output:: check.<name>=ok <detail>` or `=failed: <what to do>`.
param(
    [string]$SsoAdminGroup = '',
    [Parameter(Mandatory = $true)][string]$BackupFolder,
    [Parameter(Mandatory = $true)][long]$MinFreeBytes
)
$ErrorActionPreference = 'Stop'
$id = [Security.Principal.WindowsIdentity]::GetCurrent()
$principal = New-Object Security.Principal.WindowsPrincipal($id)
if ($principal.IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)) {
    Write-Output "::output:: check.local_admin=ok $($id.Name)"
} else {
    Write-Output "::output:: check.local_admin=failed: $($id.Name) is not a local administrator; add the agent's account to Administrators"
}
if ($SsoAdminGroup -ne '') {
    if ($principal.IsInRole($SsoAdminGroup)) {
        Write-Output "::output:: check.sso_admin=ok $($id.Name) is in $SsoAdminGroup"
    } else {
        Write-Output "::output:: check.sso_admin=failed: $($id.Name) is not in $SsoAdminGroup (the SSO Administrators group ssomanage -displaydb names); add it"
    }
}
$root = [IO.Path]::GetPathRoot([IO.Path]::GetFullPath($BackupFolder))
$free = (New-Object IO.DriveInfo($root)).AvailableFreeSpace
if ($free -ge $MinFreeBytes) {
    Write-Output "::output:: check.backup_space=ok $free bytes free on $root"
} else {
    Write-Output "::output:: check.backup_space=failed: only $free bytes free on $root, where the master secret backup is written first; free at least $MinFreeBytes bytes"
}
