<#
.SYNOPSIS
  The interop harness's Windows-relevant rows, for a Windows 10+ machine (same host only:
  network namespaces do not exist on Windows). See docs/windows.md.

.DESCRIPTION
  1. builds the programs and runs the workspace tests;
  2. reports what `transport = auto` finds (Npcap DLL, service, loopback adapter) via mwctl doctor;
  3. runs publisher -> subscriber rows on this host, local mode (Npcap loopback adapter) and
     network mode (the adapter the group routes to), 10 B / 65 420 B / 1 MiB:
       ours (socket) -> ours (npcap), ours (socket) -> ours (socket),
       real eCAL 6.1.1 -> ours (npcap), ours -> real eCAL;
     each row compares message counts and the SHA-256 digests of both sides;
  4. the fallback row: with npcap.library pointing nowhere, `auto` must run on sockets and still
     deliver every message.
  Exit code 0 only if every row passes.

.EXAMPLE
  powershell -ExecutionPolicy Bypass -File scripts\windows\interop.ps1
  powershell -ExecutionPolicy Bypass -File scripts\windows\interop.ps1 -SkipEcal
#>
param(
    [switch]$SkipEcal,
    [int]$Count = 20
)
$ErrorActionPreference = "Stop"
$root = Resolve-Path (Join-Path $PSScriptRoot "..\..")
Set-Location $root

function Section($t) { Write-Host ""; Write-Host "== $t" -ForegroundColor Cyan }

Section "machine"
Write-Host ([System.Environment]::OSVersion.VersionString)
$npcapDir = Join-Path $env:SystemRoot "System32\Npcap"
Write-Host ("Npcap directory {0}: {1}" -f $npcapDir, (Test-Path (Join-Path $npcapDir "wpcap.dll")))
$svc = Get-Service -Name npcap -ErrorAction SilentlyContinue
Write-Host ("npcap service: {0}" -f $(if ($svc) { $svc.Status } else { "not installed" }))

Section "build and unit tests"
cargo build --release -p examples -p mwctl
if ($LASTEXITCODE -ne 0) { throw "build failed" }
cargo test --workspace
if ($LASTEXITCODE -ne 0) { throw "workspace tests failed" }
$bin = Join-Path $root "target\release"

Section "what transport = auto finds"
& "$bin\mwctl.exe" doctor --transport auto --mode local --listen 1
& "$bin\mwctl.exe" doctor --transport auto --mode network --listen 1

$python = $null
if (-not $SkipEcal) {
    Section "real eCAL 6.1.1 (Python venv)"
    $venv = Join-Path $root "target\ecal-venv-windows"
    if (-not (Test-Path "$venv\Scripts\python.exe")) {
        py -3 -m venv $venv
        & "$venv\Scripts\python.exe" -m pip install --quiet eclipse-ecal==6.1.1
        if ($LASTEXITCODE -ne 0) { throw "pip install eclipse-ecal==6.1.1 failed (use -SkipEcal to run without)" }
    }
    $python = "$venv\Scripts\python.exe"
}

function EcalData($mode) {
    # UDP only, as the Linux harness configures it (xtask/src/ecal.rs).
    $dir = Join-Path $root "target\xtask\ecal-$mode-windows"
    New-Item -ItemType Directory -Force -Path $dir | Out-Null
    $yaml = @"
communication_mode: "$mode"
publisher:
  layer:
    shm: { enable: false }
    udp: { enable: true }
    tcp: { enable: false }
  priority_local: ["udp"]
  priority_network: ["udp"]
subscriber:
  layer:
    shm: { enable: false }
    udp: { enable: true }
    tcp: { enable: false }
logging:
  provider:
    udp: { enable: false }
"@
    Set-Content -Path (Join-Path $dir "ecal.yaml") -Value $yaml -Encoding ascii
    return $dir
}

# A peer process: kind = ours-socket | ours-npcap | ours-auto-nolib | ecal.
function PeerArgs($kind, $role, $mode, $topic, $size) {
    $common = @("--topic", $topic)
    if ($role -eq "pub") { $common += @("--size", "$size", "--count", "$Count", "--rate", "50") }
    else { $common += @("--count", "$Count", "--timeout", "60") }
    if ($kind -eq "ecal") {
        return @{ File = $python; Args = @((Join-Path $root "xtask\peers\ecal_peer.py"), $role) + $common }
    }
    $transport = switch ($kind) { "ours-socket" { "socket" } "ours-npcap" { "npcap" } default { "auto" } }
    $exe = if ($role -eq "pub") { "$bin\publisher.exe" } else { "$bin\subscriber.exe" }
    return @{ File = $exe; Args = $common + @("--transport", $transport, "--mode", $mode) }
}

function StartPeer($spec, $mode, $out, $extraEnv) {
    $env:ECAL_DATA = EcalData $mode
    foreach ($k in $extraEnv.Keys) { Set-Item -Path "env:$k" -Value $extraEnv[$k] }
    try {
        return Start-Process -FilePath $spec.File -ArgumentList $spec.Args -NoNewWindow -PassThru `
            -RedirectStandardOutput $out -RedirectStandardError "$out.err"
    } finally {
        foreach ($k in $extraEnv.Keys) { Remove-Item -Path "env:$k" -ErrorAction SilentlyContinue }
    }
}

$results = @()
$n = 0
function Row($pubKind, $subKind, $mode, $size, $subEnv = @{}) {
    $script:n++
    $topic = "win_row_$($script:n)"
    $dir = Join-Path $root "target\xtask\windows-rows"
    New-Item -ItemType Directory -Force -Path $dir | Out-Null
    $subOut = Join-Path $dir "$($script:n)-sub.json"; $pubOut = Join-Path $dir "$($script:n)-pub.json"
    $sub = StartPeer (PeerArgs $subKind "sub" $mode $topic $size) $mode $subOut $subEnv
    Start-Sleep -Milliseconds 800
    $pub = StartPeer (PeerArgs $pubKind "pub" $mode $topic $size) $mode $pubOut @{}
    $pub.WaitForExit(); $sub.WaitForExit()
    $p = $null; $s = $null
    try { $p = (Get-Content $pubOut -TotalCount 1) | ConvertFrom-Json } catch {}
    try { $s = (Get-Content $subOut -TotalCount 1) | ConvertFrom-Json } catch {}
    $ok = $p -and $s -and ($p.sent -eq $Count) -and ($s.received -eq $Count) -and ($p.sha256 -eq $s.sha256)
    $transport = if ($s -and $s.transport) { $s.transport } else { "" }
    if ($subKind -eq "ours-auto-nolib") { $ok = $ok -and $transport.StartsWith("socket (auto fallback") }
    $script:results += [pscustomobject]@{
        Row = $script:n; Publisher = $pubKind; Subscriber = $subKind; Mode = $mode; Size = $size
        Sent = $(if ($p) { $p.sent } else { "-" }); Received = $(if ($s) { $s.received } else { "-" })
        DigestsEqual = $(if ($p -and $s) { $p.sha256 -eq $s.sha256 } else { $false })
        Result = $(if ($ok) { "PASS" } else { "FAIL (see $subOut.err)" })
    }
}

Section "rows"
foreach ($mode in @("local", "network")) {
    foreach ($size in @(10, 65420, 1048576)) {
        Row "ours-socket" "ours-npcap" $mode $size
        Row "ours-socket" "ours-socket" $mode $size
        if ($python) {
            Row "ecal" "ours-npcap" $mode $size
            Row "ours-socket" "ecal" $mode $size
        }
    }
}
Row "ours-socket" "ours-auto-nolib" "local" 65420 @{ MW_NPCAP_LIBRARY = "C:\nonexistent\wpcap.dll" }

$results | Format-Table -AutoSize | Out-String -Width 200 | Write-Host
$failed = @($results | Where-Object { $_.Result -ne "PASS" }).Count
Write-Host ("{0} rows, {1} failed" -f $results.Count, $failed)
if ($failed -gt 0) { exit 1 }
