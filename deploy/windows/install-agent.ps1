<#
.SYNOPSIS
    Installs (or removes) the ssofleet agent as a Windows service on an SSO server.

.DESCRIPTION
    Copies fleet-agent.exe to the install folder, puts agent.toml, the agent's TLS files and the master
    secret backup password into the data folder with permissions that let only SYSTEM, the
    Administrators and the service account read them, registers the service "ssofleet-agent"
    (automatic, delayed start so that it comes back after a reboot and resumes from its journal;
    restarted on failure) and starts it.

    The service account runs the ESSO tools: it must be a member of the SSO Administrators group
    (the master secret backup through ISSOConfigSS and the verification fail otherwise) and a local administrator (setup,
    the ENTSSO service, the registry). LocalSystem is the default; a domain account is better where
    the SSO Administrators group is a domain group.

    Run it elevated, on the SSO server, from a folder holding fleet-agent.exe and the files that
    `fleetctl certs issue --ca-dir tls --agent NODE --out agent-NODE` wrote (ca.pem, agent.pem,
    agent-key.pem). Nothing is overwritten without -Force.

.PARAMETER Node
    The node's name as in fleet.toml and in its certificate (e.g. sso-dev-01).

.PARAMETER Coordinator
    The coordinator's URL, https://host:port; the host must be a name or address in the
    coordinator's certificate (fleetctl certs init --san).

.PARAMETER CertificateDir
    The folder holding ca.pem, agent.pem and agent-key.pem for this node.

.PARAMETER BackupPassword
    The master secret backup password (at least 7 characters), as a SecureString; prompted for when
    not given. It is written to <DataDir>\backup-password, readable by the service only.

.PARAMETER ServiceCredential
    The service account (DOMAIN\user and its password). Without it the service runs as LocalSystem.

.PARAMETER Reboot
    The agent's reboot policy: never (default) or if-required (the agent restarts the server when the
    installer asks for it, then verifies the install).

.PARAMETER Uninstall
    Stops and removes the service and the program folder. The data folder (journal, logs, secrets)
    stays unless -RemoveData is given too.

.EXAMPLE
    .\install-agent.ps1 -Node sso-dev-01 -Coordinator https://coord.corp.example:7443 -CertificateDir .\agent-sso-dev-01

.EXAMPLE
    .\install-agent.ps1 -Node sso-dev-01 -Coordinator https://coord.corp.example:7443 -CertificateDir .\agent-sso-dev-01 `
        -ServiceCredential (Get-Credential CORP\svc-ssofleet) -Reboot if-required

.EXAMPLE
    .\install-agent.ps1 -Uninstall
#>
[CmdletBinding(DefaultParameterSetName = 'Install')]
param(
    [Parameter(ParameterSetName = 'Install', Mandatory = $true)]
    [ValidatePattern('^[A-Za-z0-9][A-Za-z0-9._-]*$')]
    [string] $Node,

    [Parameter(ParameterSetName = 'Install', Mandatory = $true)]
    [ValidatePattern('^https://[^/\s]+:\d+/?$')]
    [string] $Coordinator,

    [Parameter(ParameterSetName = 'Install', Mandatory = $true)]
    [ValidateScript({ Test-Path -LiteralPath $_ -PathType Container })]
    [string] $CertificateDir,

    [Parameter(ParameterSetName = 'Install')]
    [System.Security.SecureString] $BackupPassword,

    [Parameter(ParameterSetName = 'Install')]
    [System.Management.Automation.PSCredential] $ServiceCredential,

    [Parameter(ParameterSetName = 'Install')]
    [ValidateSet('never', 'if-required')]
    [string] $Reboot = 'never',

    [Parameter(ParameterSetName = 'Install')]
    [ValidateScript({ Test-Path -LiteralPath $_ -PathType Leaf })]
    [string] $AgentExe = (Join-Path $PSScriptRoot 'fleet-agent.exe'),

    [string] $InstallDir = (Join-Path $env:ProgramFiles 'ssofleet'),
    [string] $DataDir = (Join-Path $env:ProgramData 'ssofleet'),

    [Parameter(ParameterSetName = 'Install')]
    [switch] $Force,

    [Parameter(ParameterSetName = 'Uninstall', Mandatory = $true)]
    [switch] $Uninstall,

    [Parameter(ParameterSetName = 'Uninstall')]
    [switch] $RemoveData
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'

$ServiceName = 'ssofleet-agent'

function Assert-Administrator {
    $principal = [Security.Principal.WindowsPrincipal][Security.Principal.WindowsIdentity]::GetCurrent()
    if (-not $principal.IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)) {
        throw 'Run this script in an elevated PowerShell (Run as administrator).'
    }
}

# fleet-agent.exe needs Windows 10 / Windows Server 2016 or later (build 10240 and up): Rust's standard
# library takes its random numbers from bcryptprimitives.dll's ProcessPrng, which older Windows lacks,
# and the program would not start at all.
function Assert-WindowsVersion {
    $version = [Environment]::OSVersion.Version
    if ($version.Major -lt 10) {
        throw "This is Windows $version: the ssofleet agent needs Windows Server 2016 / Windows 10 (10.0) or later."
    }
}

# Runs a native tool and fails on a non-zero exit code (PowerShell does not for native programs).
function Invoke-Native {
    param([string] $Program, [string[]] $Arguments)
    & $Program @Arguments | Write-Verbose
    if ($LASTEXITCODE -ne 0) {
        throw "$Program $($Arguments -join ' ') failed with exit code $LASTEXITCODE"
    }
}

# Only SYSTEM, the Administrators and the service account: inheritance removed, everything else dropped.
function Set-PrivateAcl {
    param([string] $Path, [string] $Account, [string] $Rights)
    $inherit = if (Test-Path -LiteralPath $Path -PathType Container) { '(OI)(CI)' } else { '' }
    $grants = @("*S-1-5-18:$inherit(F)", "*S-1-5-32-544:$inherit(F)")
    # SYSTEM has full control already (a second grant for it would replace the first).
    if ($Account -ne 'NT AUTHORITY\SYSTEM') { $grants += "${Account}:$inherit($Rights)" }
    Invoke-Native icacls.exe (@($Path, '/inheritance:r', '/grant:r') + $grants)
}

# A folder someone else created first (ProgramData lets users create folders) keeps its owner, who
# could change its ACL back: the Administrators take ownership and every inherited or explicit entry
# below is reset before the private ACL is applied.
function Set-PrivateFolder {
    param([string] $Path, [string] $Account)
    Invoke-Native icacls.exe @($Path, '/setowner', '*S-1-5-32-544', '/T', '/C', '/Q')
    Invoke-Native icacls.exe @($Path, '/reset', '/T', '/C', '/Q')
    Set-PrivateAcl -Path $Path -Account $Account -Rights 'M'
}

# A TOML literal string ('...'): no escapes inside, so a Windows path stays as it is.
function ConvertTo-TomlLiteral {
    param([string] $Value)
    if ($Value.Contains("'")) { throw "cannot write $Value into agent.toml: it contains a quote (')" }
    return "'$Value'"
}

function Uninstall-Agent {
    $service = Get-Service -Name $ServiceName -ErrorAction SilentlyContinue
    if ($service) {
        if ($service.Status -ne 'Stopped') {
            Stop-Service -Name $ServiceName -Force
            $service.WaitForStatus('Stopped', [TimeSpan]::FromSeconds(60))
        }
        Invoke-Native sc.exe @('delete', $ServiceName)
    } else {
        Write-Host "The service $ServiceName is not installed."
    }
    if (Test-Path -LiteralPath $InstallDir) {
        Remove-Item -LiteralPath $InstallDir -Recurse -Force
    }
    if ($RemoveData) {
        if (Test-Path -LiteralPath $DataDir) {
            Remove-Item -LiteralPath $DataDir -Recurse -Force
        }
    } else {
        Write-Host "Kept $DataDir (journal, logs, certificates, backup password): remove it with -RemoveData."
    }
}

function Install-Agent {
    foreach ($file in 'ca.pem', 'agent.pem', 'agent-key.pem') {
        if (-not (Test-Path -LiteralPath (Join-Path $CertificateDir $file) -PathType Leaf)) {
            throw "$CertificateDir has no $($file): issue it with ``fleetctl certs issue --ca-dir tls --agent $Node --out agent-$Node``"
        }
    }
    $account = if ($ServiceCredential) { $ServiceCredential.UserName } else { 'NT AUTHORITY\SYSTEM' }
    $existing = Get-Service -Name $ServiceName -ErrorAction SilentlyContinue
    if ($existing -and -not $Force) {
        throw "The service $ServiceName exists already: run with -Force to reinstall it (the journal in $DataDir is kept), or -Uninstall first."
    }
    if ($existing) {
        Write-Host "Stopping the existing $ServiceName service."
        Stop-Service -Name $ServiceName -Force
        $existing.WaitForStatus('Stopped', [TimeSpan]::FromSeconds(60))
        Invoke-Native sc.exe @('delete', $ServiceName)
    }

    # The program.
    New-Item -ItemType Directory -Force -Path $InstallDir | Out-Null
    Copy-Item -LiteralPath $AgentExe -Destination (Join-Path $InstallDir 'fleet-agent.exe') -Force

    # The data folder: journal, logs, configuration and secrets; private to the service.
    $tlsDir = Join-Path $DataDir 'tls'
    $logDir = Join-Path $DataDir 'logs'
    New-Item -ItemType Directory -Force -Path $DataDir, $tlsDir, $logDir | Out-Null
    Set-PrivateFolder -Path $DataDir -Account $account
    foreach ($file in 'ca.pem', 'agent.pem', 'agent-key.pem') {
        $target = Join-Path $tlsDir $file
        if ((Test-Path -LiteralPath $target) -and -not $Force) {
            throw "$target exists already: run with -Force to replace it"
        }
        Copy-Item -LiteralPath (Join-Path $CertificateDir $file) -Destination $target -Force
    }
    # The private key and the password: read-only for the service account.
    Set-PrivateAcl -Path (Join-Path $tlsDir 'agent-key.pem') -Account $account -Rights 'R'

    $passwordFile = Join-Path $DataDir 'backup-password'
    if (-not (Test-Path -LiteralPath $passwordFile) -or $Force) {
        if (-not $BackupPassword) {
            $BackupPassword = Read-Host -AsSecureString 'Master secret backup password (at least 7 characters)'
        }
        $plain = [System.Net.NetworkCredential]::new('', $BackupPassword).Password
        if ($plain.Length -lt 7) { throw 'ESSO refuses backup passwords shorter than 7 characters (0xC0002A54).' }
        # Created empty and locked down first, then written: the password is never readable by others.
        New-Item -ItemType File -Force -Path $passwordFile | Out-Null
        Set-PrivateAcl -Path $passwordFile -Account $account -Rights 'R'
        [System.IO.File]::WriteAllText($passwordFile, $plain, [System.Text.UTF8Encoding]::new($false))
        $plain = $null
    }
    # Read-only for the service account (also when an existing file was kept).
    Set-PrivateAcl -Path $passwordFile -Account $account -Rights 'R'

    $configFile = Join-Path $DataDir 'agent.toml'
    if ((Test-Path -LiteralPath $configFile) -and -not $Force) {
        Write-Host "Keeping the existing $configFile."
    } else {
        $config = @"
# Written by install-agent.ps1; see deploy/examples/agent.toml for every setting.
node = "$($Node.ToLowerInvariant())"
coordinator = "$($Coordinator.TrimEnd('/'))"
state_dir = $(ConvertTo-TomlLiteral $DataDir)
reboot = "$Reboot"

[tls]
ca = 'tls\ca.pem'
cert = 'tls\agent.pem'
key = 'tls\agent-key.pem'

[secrets]
backup_password_file = 'backup-password'
"@
        [System.IO.File]::WriteAllText($configFile, $config, [System.Text.UTF8Encoding]::new($false))
    }

    # The service: automatic, delayed start (after a reboot the agent verifies the install it was
    # waiting for), restarted on failure, its log in daily files.
    $exe = Join-Path $InstallDir 'fleet-agent.exe'
    $binaryPath = "`"$exe`" --service --config `"$configFile`" --log-dir `"$logDir`""
    $arguments = @{
        Name           = $ServiceName
        BinaryPathName = $binaryPath
        DisplayName    = 'ssofleet agent'
        Description    = 'Runs the ssofleet coordinator''s ESSO upgrade steps on this server.'
        StartupType    = 'Automatic'
    }
    if ($ServiceCredential) { $arguments.Credential = $ServiceCredential }
    New-Service @arguments | Out-Null
    Invoke-Native sc.exe @('config', $ServiceName, 'start=', 'delayed-auto')
    Invoke-Native sc.exe @('failure', $ServiceName, 'reset=', '86400', 'actions=', 'restart/10000/restart/30000/restart/60000')
    Invoke-Native sc.exe @('failureflag', $ServiceName, '1')

    Start-Service -Name $ServiceName
    (Get-Service -Name $ServiceName).WaitForStatus('Running', [TimeSpan]::FromSeconds(30))
    Start-Sleep -Seconds 3
    $log = Get-ChildItem -LiteralPath $logDir -Filter 'fleet-agent.log*' | Sort-Object LastWriteTime | Select-Object -Last 1
    if ($log) { Get-Content -LiteralPath $log.FullName -Tail 10 }

    Write-Host ''
    Write-Host "Installed. The agent runs as $account; check:"
    Write-Host "  - $account is in the SSO Administrators group and a local administrator;"
    if ($ServiceCredential) {
        Write-Host "  - $account has 'Log on as a service' (secpol.msc, User Rights Assignment) if your policy does not grant it;"
    }
    Write-Host "  - this server reaches $Coordinator (outbound TCP only; no inbound port is needed);"
    Write-Host "  - on the coordinator: fleetctl nodes  (the node shows attached, with its ESSO version)."
}

Assert-Administrator
if ($PSCmdlet.ParameterSetName -ne 'Uninstall') { Assert-WindowsVersion }
if ($PSCmdlet.ParameterSetName -eq 'Uninstall') { Uninstall-Agent } else { Install-Agent }
