// The testbed benchmark of issue 6: on one testbed (scripts/testbed.sh) and one 1 GiB image, each system
// serves the image from the origin and every host replays the boot trace at the same moment:
//   nbdkit      central NBD server (file plugin) on the origin; hosts read from it directly
//   http        every host downloads the whole image over HTTP (busybox httpd), then replays locally
//   bittorrent  opentracker + aria2c seed on the origin, aria2c on every host (seeding on), then local replay
//   vmthunderd  an agent per host, the origin agent holding the image (hook below: not wired yet)
// Reports per system the slowest host (maxMs), the median host, the bytes the origin sent (its eth0 tx
// counter) and the bytes each host received, checks every host read the same data as a local replay, and
// writes results.json, results.md and results.svg to --out.
//
// Usage (root): npm run bench:testbed -- [--hosts 8] [--rate 1gbit] [--origin-rate RATE] [--trace FILE]
//   [--image FILE] [--systems nbdkit,http,bittorrent,vmthunderd] [--json] [--out DIR] [--prefix vmtb]
import { spawn, execFileSync, type ChildProcess } from 'node:child_process'
import { mkdtemp, mkdir, rm, writeFile, symlink, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, resolve, basename } from 'node:path'
import { fileURLToPath } from 'node:url'
import { testbedUp, testbedDown, linkCounters, nsSpawn, type Testbed, type TestbedNode } from '../test/helpers/testbed.js'
import { buildGuest } from '../test/helpers/vm.js'
import { loadTrace, distinctBytes, replayFile } from './lib/nbd-replay.js'

const REPO_ROOT = resolve(fileURLToPath(new URL('.', import.meta.url)), '..')
const HOST_DRIVER = join(REPO_ROOT, 'scripts', 'bench-testbed-host.ts')
const NBD_PORT = 10809
const HTTP_PORT = 8080
const TRACKER_PORT = 6969
const READY_TIMEOUT_MS = 60_000
const ALL_SYSTEMS = ['vmthunderd', 'nbdkit', 'http', 'bittorrent'] as const
type SystemName = typeof ALL_SYSTEMS[number]

export interface SystemResult {
  maxMs: number
  medianMs: number
  originBytes: number
  /** Median over hosts of the bytes each host's eth0 received. */
  hostBytesMedian: number
  perHostMs: number[]
  /** Median time to fetch the whole image before replaying (full-copy systems). */
  fetchMedianMs?: number
  /** The longest single read seen by any host (a stall). */
  maxReadMs: number
  dataOk: boolean
}

export interface BenchResults {
  distinctBytes: number
  hosts: number
  rate: string
  originRate: string
  trace: string
  imageBytes: number
  systems: Partial<Record<SystemName, SystemResult>>
  skipped: Partial<Record<SystemName, string>>
}

/** What a system sets up on the testbed: origin-side services and the host driver's arguments per host. */
export interface SystemRun {
  /** bench-testbed-host.ts arguments (after the mode-independent --trace) for host i (0-based). */
  hostArgs: (i: number, host: TestbedNode) => string[]
  /** Stops the origin-side services (the orchestrator stops the host drivers). */
  stop: () => Promise<void>
  /**
   * Called right after GO was sent to every host, not awaited by the timing: the place for failure
   * injection (issue 6's failure run kills one relay host's agent mid-run). Errors fail the run.
   */
  afterGo?: (signal: AbortSignal) => Promise<void>
}

export interface SystemContext {
  tb: Testbed
  /** The image on the origin, its size, and a work directory per node (origin: `workDir/origin`). */
  image: string
  imageBytes: number
  workDir: string
  hostDir: (i: number) => string
  signal: AbortSignal
}

export class BenchError extends Error {
  override name = 'BenchError'
}

// ---------------------------------------------------------------------------------------------------------
// Processes on the testbed

const started = new Set<ChildProcess>()

function startIn (ns: string, cmd: string, args: string[], opts: { cwd?: string, stdin?: boolean } = {}): ChildProcess {
  const c = nsSpawn(ns, cmd, args, { cwd: opts.cwd, stdio: [opts.stdin === true ? 'pipe' : 'ignore', 'pipe', 'pipe'] })
  started.add(c)
  c.once('close', () => started.delete(c))
  // A driver that died (Ctrl-C reaches the whole process group) must not crash us when we write STOP.
  c.stdin?.on('error', () => {})
  let err = ''
  c.stderr?.on('data', (b: Buffer) => { err = (err + b.toString()).slice(-3000) });
  (c as ChildProcess & { errTail: () => string }).errTail = () => err
  return c
}
const errTail = (c: ChildProcess): string => (c as ChildProcess & { errTail?: () => string }).errTail?.() ?? ''

async function stopProc (c: ChildProcess, graceMs = 5000): Promise<void> {
  if (c.exitCode !== null || c.signalCode !== null) return
  const closed = new Promise<void>((resolve) => c.once('close', () => { resolve() }))
  c.kill('SIGTERM')
  const t = setTimeout(() => c.kill('SIGKILL'), graceMs)
  await closed
  clearTimeout(t)
}

/** Waits for a line on the child's stdout satisfying `pred`; rejects if it exits first or on timeout. */
function waitForLine (c: ChildProcess, pred: (l: string) => boolean, timeoutMs: number, signal: AbortSignal): Promise<string> {
  return new Promise((resolve, reject) => {
    let buf = ''
    const cleanup = (): void => {
      clearTimeout(timer)
      c.stdout?.off('data', onData)
      c.off('close', onClose)
      signal.removeEventListener('abort', onAbort)
    }
    const onData = (b: Buffer): void => {
      buf += b.toString()
      let nl: number
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl).trim()
        buf = buf.slice(nl + 1)
        if (pred(line)) { cleanup(); resolve(line); return }
      }
    }
    const onClose = (code: number | null): void => { cleanup(); reject(new BenchError(`process exited (${String(code)}) before '${pred.toString()}': ${errTail(c)}`)) }
    const onAbort = (): void => { cleanup(); reject(signal.reason) }
    const timer = setTimeout(() => { cleanup(); reject(new BenchError(`timed out after ${timeoutMs} ms: ${errTail(c)}`)) }, timeoutMs)
    c.stdout?.on('data', onData)
    c.once('close', onClose)
    signal.addEventListener('abort', onAbort, { once: true })
  })
}

/** Resolves once something listens on ip:port inside ns (bounded retries of a TCP connect). */
async function waitListening (ns: string, ip: string, port: number, signal: AbortSignal): Promise<void> {
  const probe = `const s=require('net').connect(${port},'${ip}');s.on('connect',()=>process.exit(0));s.on('error',()=>process.exit(1))`
  for (let i = 0; i < 100; i++) {
    signal.throwIfAborted()
    try { execFileSync('ip', ['netns', 'exec', ns, process.execPath, '-e', probe], { stdio: 'ignore', timeout: 5000 }); return } catch {}
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  throw new BenchError(`nothing listens on ${ip}:${port} in ${ns}`)
}

// ---------------------------------------------------------------------------------------------------------
// The systems

async function runNbdkit (ctx: SystemContext): Promise<SystemRun> {
  const { origin } = ctx.tb
  const p = startIn(origin.ns, 'nbdkit', ['-f', '-r', '-i', origin.ip, '-p', String(NBD_PORT), 'file', ctx.image])
  await waitListening(origin.ns, origin.ip, NBD_PORT, ctx.signal)
  return {
    hostArgs: () => ['nbd', '--host', origin.ip, '--port', String(NBD_PORT), '--export', 'guest'],
    stop: async () => { await stopProc(p) }
  }
}

async function runHttp (ctx: SystemContext): Promise<SystemRun> {
  const { origin } = ctx.tb
  const root = join(ctx.workDir, 'origin', 'www')
  await mkdir(root, { recursive: true })
  await symlink(ctx.image, join(root, 'guest.raw')).catch(() => {})
  const p = startIn(origin.ns, 'busybox', ['httpd', '-f', '-p', `${origin.ip}:${HTTP_PORT}`, '-h', root])
  await waitListening(origin.ns, origin.ip, HTTP_PORT, ctx.signal)
  return {
    hostArgs: (i) => ['http', '--url', `http://${origin.ip}:${HTTP_PORT}/guest.raw`, '--dest', join(ctx.hostDir(i), 'guest.raw')],
    stop: async () => { await stopProc(p) }
  }
}

async function runBittorrent (ctx: SystemContext): Promise<SystemRun> {
  const { origin } = ctx.tb
  const seedDir = join(ctx.workDir, 'origin', 'seed')
  await mkdir(seedDir, { recursive: true })
  await symlink(ctx.image, join(seedDir, 'guest.raw')).catch(() => {})
  const torrent = join(ctx.workDir, 'guest.torrent')
  // 1 MiB pieces: 1,024 pieces for 1 GiB (hashing takes a few seconds, outside the timed part).
  execFileSync('mktorrent', ['-a', `http://${origin.ip}:${TRACKER_PORT}/announce`, '-l', '20', '-n', 'guest.raw', '-o', torrent, join(seedDir, 'guest.raw')], { stdio: 'ignore', timeout: 300_000 })
  const trackerDir = join(ctx.workDir, 'origin', 'tracker')
  await mkdir(trackerDir, { recursive: true })
  // Debian's opentracker is built in whitelist mode: it tracks only the info hashes listed in -w FILE.
  const infoHash = /Info Hash: ([0-9a-f]{40})/i.exec(execFileSync('aria2c', ['-S', torrent], { timeout: 60_000 }).toString())?.[1]
  if (infoHash === undefined) throw new BenchError('aria2c -S printed no info hash')
  await writeFile(join(trackerDir, 'whitelist'), infoHash + '\n')
  const tracker = startIn(origin.ns, 'opentracker', ['-i', origin.ip, '-p', String(TRACKER_PORT), '-P', String(TRACKER_PORT), '-d', trackerDir, '-w', 'whitelist'], { cwd: trackerDir })
  await waitListening(origin.ns, origin.ip, TRACKER_PORT, ctx.signal)
  const seed = startIn(origin.ns, 'aria2c', [
    `--dir=${seedDir}`, '--seed-ratio=0.0', '--bt-seed-unverified=true', '--check-integrity=false', '--enable-dht=false',
    '--enable-dht6=false', '--bt-enable-lpd=false', '--file-allocation=none', '--bt-tracker-interval=1', '--bt-max-peers=0',
    '--summary-interval=0', '--console-log-level=warn', '--listen-port=6881', '--disable-ipv6=true',
    `--stop-with-process=${process.pid}`, torrent
  ])
  await waitListening(origin.ns, origin.ip, 6881, ctx.signal)
  return {
    hostArgs: (i) => ['bt', '--torrent', torrent, '--dir', ctx.hostDir(i), '--dest', join(ctx.hostDir(i), 'guest.raw')],
    stop: async () => { await stopProc(seed); await stopProc(tracker) }
  }
}

/**
 * HOOK for the lead: vmthunderd. Start the origin agent holding `ctx.image` (origin namespace) and one agent
 * per host (host namespaces, each with its NBD unix socket), then return for each host
 * `['nbd', '--socket', SOCKET_OF_HOST_i, '--export', NAME]` and a `stop` that ends the agents. Return
 * undefined while the daemon is not ready: the system is reported as skipped.
 */
async function runVmthunderd (_ctx: SystemContext): Promise<SystemRun | undefined> {
  return undefined
}

const SYSTEMS: Record<SystemName, (ctx: SystemContext) => Promise<SystemRun | undefined>> = {
  vmthunderd: runVmthunderd,
  nbdkit: runNbdkit,
  http: runHttp,
  bittorrent: runBittorrent
}

// ---------------------------------------------------------------------------------------------------------
// One run of one system

interface HostDone { doneMs: number, fetchMs?: number, replayMs: number, maxReadMs: number, bytes: number, digest: string }

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b)
  return s.length === 0 ? 0 : s.length % 2 === 1 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2
}

async function runSystem (name: SystemName, ctx: SystemContext, trace: string, refDigest: string, timeoutMs: number, log: (s: string) => void): Promise<SystemResult | string> {
  const { tb } = ctx
  for (let i = 0; i < tb.hosts.length; i++) { await rm(ctx.hostDir(i), { recursive: true, force: true }); await mkdir(ctx.hostDir(i), { recursive: true }) }
  const sys = await SYSTEMS[name](ctx)
  if (sys === undefined) return 'not wired into the benchmark yet'
  const drivers: ChildProcess[] = []
  try {
    for (const [i, h] of tb.hosts.entries()) {
      drivers.push(startIn(h.ns, process.execPath, ['--import', 'tsx', HOST_DRIVER, ...sys.hostArgs(i, h), '--trace', trace], { cwd: REPO_ROOT, stdin: true }))
    }
    await Promise.all(drivers.map((d) => waitForLine(d, (l) => l === 'READY', READY_TIMEOUT_MS, ctx.signal)))
    const originBefore = await linkCounters(tb.origin.ns)
    const hostsBefore = await Promise.all(tb.hosts.map((h) => linkCounters(h.ns)))
    const dones = drivers.map((d) => waitForLine(d, (l) => l.startsWith('DONE '), timeoutMs, ctx.signal).then((l) => JSON.parse(l.slice(5)) as HostDone))
    dones.forEach((p) => p.catch(() => {}))
    for (const d of drivers) d.stdin?.write('GO\n')
    log(`${name}: ${tb.hosts.length} hosts started`)
    const injected = sys.afterGo?.(ctx.signal) ?? Promise.resolve()
    const [results] = await Promise.all([Promise.all(dones), injected])
    const originAfter = await linkCounters(tb.origin.ns)
    const hostsAfter = await Promise.all(tb.hosts.map((h) => linkCounters(h.ns)))
    const perHostMs = results.map((r) => Math.round(r.doneMs))
    const fetches = results.map((r) => r.fetchMs).filter((x): x is number => x !== undefined)
    return {
      maxMs: Math.max(...perHostMs),
      medianMs: Math.round(median(perHostMs)),
      originBytes: originAfter.txBytes - originBefore.txBytes,
      hostBytesMedian: median(hostsAfter.map((a, i) => a.rxBytes - hostsBefore[i].rxBytes)),
      perHostMs,
      ...(fetches.length > 0 ? { fetchMedianMs: Math.round(median(fetches)) } : {}),
      maxReadMs: Math.round(Math.max(...results.map((r) => r.maxReadMs))),
      dataOk: results.every((r) => r.digest === refDigest)
    }
  } finally {
    for (const d of drivers) { d.stdin?.write('STOP\n'); d.stdin?.end() }
    await Promise.all(drivers.map(async (d) => { await stopProc(d) }))
    await sys.stop()
    for (let i = 0; i < tb.hosts.length; i++) await rm(ctx.hostDir(i), { recursive: true, force: true })
  }
}

// ---------------------------------------------------------------------------------------------------------
// Report

const mib = (b: number): string => (b / 2 ** 20).toFixed(1)
const secs = (ms: number): string => (ms / 1000).toFixed(2)

export function markdownTable (r: BenchResults, command: string): string {
  const base = r.systems.nbdkit
  const rows = ALL_SYSTEMS.map((name) => {
    const s = r.systems[name]
    if (s === undefined) return `| ${name} | skipped: ${r.skipped[name] ?? 'not run'} | | | | | |`
    const vs = base !== undefined ? `${(s.maxMs / base.maxMs).toFixed(2)}x` : 'n/a'
    return `| ${name} | ${secs(s.maxMs)} | ${secs(s.medianMs)} | ${vs} | ${mib(s.originBytes)} (${(s.originBytes / r.distinctBytes).toFixed(2)}x) | ${mib(s.hostBytesMedian)} | ${s.dataOk ? 'yes' : 'NO'} |`
  })
  return [
    `${r.hosts} hosts at ${r.rate} (origin ${r.originRate}), trace ${basename(r.trace)} (${mib(r.distinctBytes)} MiB distinct), image ${mib(r.imageBytes)} MiB.`,
    `Command: \`${command}\``,
    '',
    '| system | slowest host (s) | median host (s) | slowest vs nbdkit | origin sent MiB (x distinct) | MiB per host | data ok |',
    '| --- | --- | --- | --- | --- | --- | --- |',
    ...rows,
    ''
  ].join('\n')
}

export function svgChart (r: BenchResults): string {
  const names = ALL_SYSTEMS.filter((n) => r.systems[n] !== undefined)
  const W = 640
  const rowH = 46
  const left = 110
  const H = 50 + names.length * rowH
  const maxMs = Math.max(1, ...names.map((n) => r.systems[n]?.maxMs ?? 0))
  const scale = (ms: number): number => (ms / maxMs) * (W - left - 90)
  const bars = names.map((n, i) => {
    const s = r.systems[n] as SystemResult
    const y = 40 + i * rowH
    return `<text x="${left - 8}" y="${y + 16}" text-anchor="end">${n}</text>` +
      `<rect x="${left}" y="${y}" width="${scale(s.maxMs).toFixed(1)}" height="14" fill="#c0392b"/>` +
      `<text x="${(left + scale(s.maxMs) + 4).toFixed(1)}" y="${y + 12}">${secs(s.maxMs)} s max</text>` +
      `<rect x="${left}" y="${y + 16}" width="${scale(s.medianMs).toFixed(1)}" height="14" fill="#2980b9"/>` +
      `<text x="${(left + scale(s.medianMs) + 4).toFixed(1)}" y="${y + 28}">${secs(s.medianMs)} s median</text>`
  }).join('\n')
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="12">
<text x="10" y="20" font-size="14">Boot-trace replay on ${r.hosts} hosts at ${r.rate} (origin ${r.originRate}): time until hosts finish</text>
${bars}
</svg>
`
}

// ---------------------------------------------------------------------------------------------------------
// Main

function parseArgs (argv: string[]): Map<string, string> {
  const m = new Map<string, string>()
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    if (!a.startsWith('--')) throw new BenchError(`unexpected argument ${a}`)
    const [k, v] = a.includes('=') ? [a.slice(2, a.indexOf('=')), a.slice(a.indexOf('=') + 1)] : [a.slice(2), undefined]
    if (k === 'json') { m.set(k, 'true'); continue }
    const val = v ?? argv[++i]
    if (val === undefined) throw new BenchError(`--${k} needs a value`)
    m.set(k, val)
  }
  return m
}

async function main (): Promise<void> {
  const args = parseArgs(process.argv.slice(2))
  const hosts = Number(args.get('hosts') ?? 8)
  const rate = args.get('rate') ?? '1gbit'
  const originRate = args.get('origin-rate') ?? rate
  const prefix = args.get('prefix') ?? 'vmtb'
  const trace = resolve(args.get('trace') ?? join(REPO_ROOT, 'test', 'fixtures', 'debian12-boot.reads.csv'))
  const json = args.get('json') === 'true'
  const outDir = resolve(args.get('out') ?? join(REPO_ROOT, 'results', `testbed-${hosts}h-${rate}`))
  const systems = (args.get('systems') ?? ALL_SYSTEMS.join(',')).split(',') as SystemName[]
  for (const s of systems) if (!ALL_SYSTEMS.includes(s)) throw new BenchError(`unknown system ${s} (have ${ALL_SYSTEMS.join(', ')})`)
  const log = (s: string): void => { process.stderr.write(`bench-testbed: ${s}\n`) }

  const ac = new AbortController()
  let tb: Testbed | undefined
  let workDir: string | undefined
  let tornDown: Promise<void> | undefined
  const teardown = async (): Promise<void> => {
    tornDown ??= (async () => {
      await Promise.all([...started].map(async (c) => { await stopProc(c, 2000) }))
      if (tb !== undefined) await testbedDown(prefix).catch(() => {})
      if (workDir !== undefined) await rm(workDir, { recursive: true, force: true }).catch(() => {})
    })()
    await tornDown
  }
  const onSignal = (sig: string): void => {
    log(`${sig}: tearing down`)
    ac.abort(new BenchError(sig))
    void teardown().finally(() => process.exit(130))
  }
  process.once('SIGINT', onSignal)
  process.once('SIGTERM', onSignal)

  try {
    const image = args.get('image') ?? (await buildGuest({ signal: ac.signal })).raw
    const imageBytes = (await stat(image)).size
    const reads = await loadTrace(trace)
    const maxEnd = Math.max(...reads.map((r) => r.offset + r.length))
    if (maxEnd > imageBytes) throw new BenchError(`trace reads up to ${maxEnd} but the image has ${imageBytes} bytes`)
    const refDigest = (await replayFile(reads, image)).digest
    const distinct = distinctBytes(reads)
    workDir = await mkdtemp(join(tmpdir(), 'vmtb-bench-'))
    const wd = workDir
    tb = await testbedUp({ hosts, rate, originRate, prefix, signal: ac.signal })
    const ctx: SystemContext = { tb, image, imageBytes, workDir: wd, hostDir: (i) => join(wd, `h${i + 1}`), signal: ac.signal }
    // Bound per system: a few times the slowest plausible case (every host pulling the whole image from
    // the origin), at least 2 minutes.
    const originBps = tb.originRateBytesPerSec
    const timeoutMs = Number(args.get('timeout-s') ?? 0) * 1000 || Math.max(120_000, 3 * (hosts * imageBytes / originBps) * 1000)
    const results: BenchResults = { distinctBytes: distinct, hosts, rate, originRate, trace, imageBytes, systems: {}, skipped: {} }
    for (const name of ALL_SYSTEMS.filter((s) => systems.includes(s))) {
      log(`${name}: starting`)
      const r = await runSystem(name, ctx, trace, refDigest, timeoutMs, log)
      if (typeof r === 'string') { results.skipped[name] = r; log(`${name}: skipped (${r})`); continue }
      results.systems[name] = r
      log(`${name}: slowest ${secs(r.maxMs)} s, median ${secs(r.medianMs)} s, origin sent ${mib(r.originBytes)} MiB, data ${r.dataOk ? 'ok' : 'WRONG'}`)
    }
    const command = `npm run bench:testbed -- ${process.argv.slice(2).join(' ')}`.trim()
    await mkdir(outDir, { recursive: true })
    await writeFile(join(outDir, 'results.json'), JSON.stringify(results, null, 2) + '\n')
    const md = markdownTable(results, command)
    await writeFile(join(outDir, 'results.md'), md)
    await writeFile(join(outDir, 'results.svg'), svgChart(results))
    if (json) {
      const out = { distinctBytes: results.distinctBytes, systems: Object.fromEntries(Object.entries(results.systems).map(([k, v]) => [k, { maxMs: v.maxMs, medianMs: v.medianMs, originBytes: v.originBytes }])) }
      process.stdout.write(JSON.stringify(out) + '\n')
    } else {
      process.stdout.write(md)
      log(`results written to ${outDir}`)
    }
  } finally {
    await teardown()
  }
}

main().catch((err: Error) => { process.stderr.write(`bench-testbed: ${err.name}: ${err.message}\n`); process.exitCode = 1 })
