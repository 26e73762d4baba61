// The testbed benchmark of issue 6: on one testbed (scripts/testbed.sh) and one 1 GiB image, each system
// serves the image from the origin and every host replays the boot trace at the same moment:
//   nbdkit      central NBD server (file plugin) on the origin; hosts read from it directly
//   http        every host downloads the whole image over HTTP (busybox httpd), then replays locally
//   bittorrent  opentracker + aria2c seed on the origin, aria2c on every host (seeding on), then local replay
//   vmthunderd  an agent per host on the daemon's DEFAULT config (prefetch on, as a user runs it), the origin
//               agent holding the image; each host creates its instance at GO (timed, as a VM boot would) and
//               replays over its own agent's NBD export
//   vmthunderd-failure   the same, and one relay host's agent is killed (SIGKILL) once a child has read
//               through it, then restarted as a service manager would; every host must still read correct data
//   vmthunderd-noprefetch  the same with the prefetcher off: the on-demand path alone (not in the default list)
//   vmthunderd-churn     churn during the boot wave: a quarter of the host agents (at least one) each get SIGKILL
//               twice at random moments (seeded: --seed) and are restarted at once; every host's data checked,
//               the longest read stall per host reported, and each restarted agent checked to serve again
//   vmthunderd-churn-origin  the same, then the origin agent killed and restarted twice too (not in the default list)
// Reports per system the slowest host (maxMs), the median host, the bytes the origin sent (its eth0 tx
// counter) and the bytes each host received, checks every host read the same data as a local replay, and
// writes results.json, results.md and results.svg to --out.
//
// Usage (root): npm run bench:testbed -- [--hosts 8] [--rate 1gbit] [--origin-rate RATE] [--trace FILE]
//   [--image trace|guest|FILE] [--systems vmthunderd,nbdkit,http,bittorrent,vmthunderd-failure] [--json] [--out DIR]
//   [--prefix vmtb] [--vmt-config FILE (merged into the agents' config)] [--vmt-create at-go|before] [--think]
//   [--timeout-s S (per system; default from the full-copy worst case)] [--vmt-timeout-s 600] [--seed S (churn runs)]
//   [--warm-up (vmthunderd: before GO every host boots another image of the same trace, then drops it)]
//   [--perf (vmthunderd: perf record the agents from GO until every host is done; prints where their CPU went)]
//   [--stagger-ms N (host i gets GO i*N ms after the first, as VMs launched one after another; every host's
//   time still counts from its own GO)]
//   [--vmt-profile (vmthunderd: the image was booted before: its origin holds a boot profile made from the trace,
//   which the hosts fetch and read ahead along; the headline is the first boot, without it)]
// --warm-up measures agents that have served a boot before, as a long-running agent has: a fresh agent's
// first boot also pays V8 for compiling its code paths (perf record: about 20 % of a host agent's CPU in
// TurboFan and 20 % in not yet optimized code in the 8-host wave). The headline figures are those without it.
import { spawn, execFileSync, type ChildProcess } from 'node:child_process'
import { mkdtemp, mkdir, rm, writeFile, symlink, stat, readFile } from 'node:fs/promises'
import { createWriteStream, type WriteStream } from 'node:fs'
import { tmpdir, loadavg } from 'node:os'
import { dirname, join, resolve, basename } from 'node:path'
import { fileURLToPath } from 'node:url'
import { testbedUp, testbedDown, linkCounters, nsSpawn, type Testbed, type TestbedNode } from '../test/helpers/testbed.js'
import { buildGuest } from '../test/helpers/vm.js'
import { loadTrace, distinctBytes, replayFile, nbdConnect, replayNbd, SLOW_READ_MS, type SlowRead, type TraceRead } from './lib/nbd-replay.js'
import { AGENT_NODE_FLAGS, DAEMON_BIN, agentEnv as agentEnvOf } from './lib/agent-process.js'
import { makeTraceImage } from './lib/trace-image.js'
import { ActivityCounter, ACTIVITY_GROUPS, OTHER_ACTIVITY } from './lib/perf-activity.js'
import { createInterface } from 'node:readline'
import { callRpc } from '../src/rpc/client.js'
import { createRecorder, profileToJson } from '../src/prefetch/index.js'
import { mulberry32 as seededRandom } from './lib/trial-utils.js'

const REPO_ROOT = resolve(fileURLToPath(new URL('.', import.meta.url)), '..')
const HOST_DRIVER = join(REPO_ROOT, 'scripts', 'bench-testbed-host.ts')
const NBD_PORT = 10809
const HTTP_PORT = 8080
const TRACKER_PORT = 6969
const READY_TIMEOUT_MS = 60_000
const ALL_SYSTEMS = ['vmthunderd', 'nbdkit', 'http', 'bittorrent', 'vmthunderd-failure', 'vmthunderd-noprefetch', 'vmthunderd-churn', 'vmthunderd-churn-origin'] as const
const DEFAULT_SYSTEMS = ['vmthunderd', 'nbdkit', 'http', 'bittorrent', 'vmthunderd-failure']
type SystemName = typeof ALL_SYSTEMS[number]
const IMAGE_ID = 'guest'
const TRACE_IMAGE_BYTES = 1024 ** 3
// Generous: nine agents compile and start at once, and on a shared 2-core machine that can take a minute.
const AGENT_START_TIMEOUT_MS = 180_000
const AGENT_RPC_TIMEOUT_MS = 120_000
/** Churn runs: each victim's kills come this long apart at random (ms), the first after GO. */
const CHURN_GAP_MS: [number, number] = [500, 4000]
const CHURN_KILLS_PER_VICTIM = 2
/** A read counts as a churn stall if it overlapped a SIGKILL .. (agent up again + this) window. */
const CHURN_WINDOW_AFTER_MS = 2000
/** Failure run: node.status is polled this often to find a relay to kill. */
const FAILURE_POLL_MS = 50

export interface SystemResult {
  maxMs: number
  medianMs: number
  originBytes: number
  /** Median over hosts of the bytes each host's eth0 received. */
  hostBytesMedian: number
  perHostMs: number[]
  /** Median time to fetch the whole image before replaying (full-copy systems). */
  fetchMedianMs?: number
  /**
   * The slowest host's time split: what came before its replay's first read (instance.create, for vmthunderd,
   * and the NBD connect) and the replay itself. With think times the replay's length against the local file's
   * says how late its reads fell behind the trace; the rest of the seconds added is the set-up before it.
   */
  slowestSplit?: { createMs?: number, beforeReplayMs: number, replayMs: number }
  /** The longest single read seen by any host (a stall). */
  maxReadMs: number
  /** Median over hosts of each host's median and 90th-percentile single-read time, ms. */
  readMsP50?: number
  readMsP90?: number
  dataOk: boolean
  /** Hosts that did not finish (their driver failed: e.g. a read returned an error); maxMs/medianMs omit them. */
  failedHosts?: Array<{ host: string, error: string }>
  /** The machine's 1-minute load average before the system started and after its hosts finished. */
  loadAvg1?: [number, number]
  /**
   * CPU-seconds the machine spent in processes at a positive nice level (other work in the background) while the
   * system ran, from /proc/stat. With the kernel's autogroup scheduling on, such work competes at full weight.
   */
  niceCpuS?: number
  /** Bytes each host's eth0 received during the run, in host order. */
  perHostRxBytes: number[]
  /** vmthunderd: each host's agent after the run (node.status). */
  agents?: AgentReport[]
  /** vmthunderd: CPU time of the origin agent from GO until every host was done. */
  originCpuMs?: number
  /** The whole machine's busy CPU from GO until every host was done (/proc/stat), agents included. */
  machineCpuMs?: number
  /** vmthunderd: host agents' CPU from GO until every host was done (start-up excluded), median and max, ms. */
  cpuPerHostMedianMs?: number
  cpuPerHostMaxMs?: number
  /** vmthunderd: host agents' CPU from their start until GO (start-up, image set-up), median, ms. */
  startupCpuMedianMs?: number
  /** vmthunderd: host agents' minor page faults from GO until every host was done, median. */
  pageFaultsPerHostMedian?: number
  /** vmthunderd: all agents' CPU (origin included) over the MiB their p2p layers moved (received + sent). */
  cpuMsPerMiBMoved?: number
  /** vmthunderd-failure: what was killed and what it cost. */
  failure?: FailureReport
  /** vmthunderd-churn(-origin): the kills and what they cost. */
  churn?: ChurnReport
  /** vmthunderd --perf: the host agents' on-CPU samples (GO until done) by activity. */
  perfActivity?: PerfActivity
}

export interface AgentReport {
  host: string
  /** Parents (host names; 'origin') and depth at the end of the run. */
  parents: string[]
  depth: number | null
  bytesFromOrigin: number
  bytesFromPeers: number
  /** Bytes this agent's p2p layer sent to its children. */
  bytesSent: number
  /** CPU time the agent process used from GO until every host was done (the last process, if restarted). */
  cpuMs: number
  /** CPU time the agent used from its start until GO (start-up). */
  startupCpuMs?: number
  /** Minor page faults of the agent process from GO until every host was done (first touches of memory). */
  pageFaults?: number
  /** Time instance.create took (manifest fetch, cache and overlay), ms. */
  createMs?: number
  maxReadMs: number
  /** The VM's first read, ms (its agent's attach is in it). */
  firstReadMs?: number
  /** Of the bytes fetched, those prefetch (read-ahead or idle) asked for: no VM read waited on them. */
  prefetchedBytes?: number
  /** VM reads whose blocks were all local when they arrived, and those that waited for a fetch. */
  readsLocal?: number
  readsFetched?: number
  /** The agent's block requests to peers (node.status p2p.blockRequests). */
  blockRequests?: { requests: number, hedges: number, cancelled: number, failovers: number, duplicateBlocks: number }
  /** The agent's data channels at the end (node.status p2p.dataChannels): links on one, connections served. */
  dataChannels?: { port: number | null, outbound: number, inbound: number }
  /** Adverts the agent published for the image (since its last start), GO to the end of the run included. */
  advertsPublished?: number
}

export interface FailureReport {
  /** The host whose agent got SIGKILL, or null when no relay was found before every host finished. */
  killedHost: string | null
  killedAtMs?: number
  /** Hosts that had the killed agent as a parent, and had read through it, at the moment of the kill. */
  childrenAtKill?: string[]
  /** Time from the kill until the restarted agent logged 'vmthunderd started'. */
  restartMs?: number
  /** Longest single read on hosts other than the killed one (the stall their VMs saw). */
  survivorsMaxReadMs?: number
  /** Longest single read on the killed host (includes its agent's restart). */
  killedHostMaxReadMs?: number
  note?: string
}

export interface ChurnKill {
  agent: string
  /** ms after GO. */
  atMs: number
  /** From SIGKILL until the restarted agent logged 'vmthunderd started'. */
  restartMs: number
}

export interface ChurnReport {
  seed: number
  kills: ChurnKill[]
  /** Longest single read per host, in host order (a killed host's includes its own agent's restart). */
  maxReadMsPerHost: number[]
  /**
   * Per host, the longest read that overlapped a kill window (from a SIGKILL until CHURN_WINDOW_AFTER_MS after
   * that agent was up again), and the longest read that overlapped none (a stall of load, not of churn). Null:
   * no read over SLOW_READ_MS there. Times are GO-relative on both sides (the orchestrator's and the driver's
   * clocks start within a few ms of each other).
   */
  churnStallMsPerHost?: Array<number | null>
  otherStallMsPerHost?: Array<number | null>
  /** Hosts whose agent was killed. */
  churnedHosts: string[]
  /** Per restarted agent: bytes it sent to peers since its last restart, and whether its NBD export served its VM again. */
  servesAgain: Array<{ agent: string, sentToPeersBytes: number, exportServed: boolean | null }>
  note?: string
}

export interface BenchResults {
  distinctBytes: number
  hosts: number
  rate: string
  originRate: string
  trace: string
  imageBytes: number
  /** The checkout the agents ran from: HEAD and whether src/ had uncommitted changes. */
  code?: string
  /** 'trace' (generated from the trace), 'guest', or the file given. */
  image?: string
  /**
   * --vmt-profile: the origin holds a boot profile of the image before GO (made from the trace, as an earlier
   * boot anywhere in the swarm would have left one), so the wave reads ahead along it: an image booted before,
   * where the headline is its very first boot.
   */
  vmtProfile?: boolean
  /** --think: every host replays with the trace's think times; localThinkMs is the same replay from a local file. */
  think?: boolean
  /** --warm-up: the agents served one boot of another image before GO. */
  warmUp?: boolean
  /** --stagger-ms: host i got GO i * staggerMs after the first. */
  staggerMs?: number
  /** The kernel scheduled by autogroup during the run (nice did not rank background work below the benchmark). */
  autogroup?: boolean
  localThinkMs?: number
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
  afterGo?: (signal: AbortSignal, hosts: HostControl) => Promise<void>
  /** Called once every host is done, before `stop`: what the system adds to its result. */
  report?: (done: HostDone[]) => Promise<Partial<SystemResult>>
}

/** What afterGo may do to the host drivers. */
export interface HostControl {
  /** Writes a line to host i's driver (e.g. RESUME after its agent was restarted). */
  tell: (i: number, line: string) => void
  /** Resolves when every host printed DONE (or one failed). */
  allDone: Promise<unknown>
  /** Indexes of the hosts that printed DONE so far. */
  doneHosts: ReadonlySet<number>
}

export interface SystemContext {
  /** Hosts replay with the trace's think times. */
  think: boolean
  /** Host i starts i * staggerMs after the first (0: all at once). */
  staggerMs: number
  tb: Testbed
  /** The image on the origin, its size, and a work directory per node (origin: `workDir/origin`). */
  image: string
  imageBytes: number
  workDir: string
  hostDir: (i: number) => string
  signal: AbortSignal
  /** Where a system may leave logs (agents' JSON lines): `${outDir}/logs`. */
  logDir: string
  /** vmthunderd: config merged into the agents' (--vmt-config), and when instances are created. */
  vmtConfig: Record<string, unknown>
  vmtCreate: 'at-go' | 'before'
  /** vmthunderd: before GO, every host boots another image with the same trace (agents that served a boot before). */
  warmUp: boolean
  /** vmthunderd: the origin holds a boot profile of the image made from the trace before GO (--vmt-profile). */
  vmtProfile: boolean
  /** The trace the hosts replay. */
  reads: readonly TraceRead[]
  /** vmthunderd: perf record the agents from GO until every host is done (--perf). */
  perf: boolean
  /** Seeds the random choices of the churn runs (--seed). */
  seed: number
  log: (s: string) => void
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

// ---- vmthunderd ----

interface Agent {
  name: string
  node: TestbedNode
  dir: string
  socket: string
  nbdSocket: string
  args: string[]
  proc: ChildProcess
}

/** Starts vmthunderd in the node's namespace; resolves once it logged 'vmthunderd started'. Logs go to logDir/NAME.log. */
async function spawnAgent (a: Omit<Agent, 'proc'>, logDir: string, signal: AbortSignal): Promise<ChildProcess> {
  await mkdir(logDir, { recursive: true })
  // VMTB_AGENT_NODE_ARGS (e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof") goes to every agent's node: for profiling.
  const nodeArgs = (process.env.VMTB_AGENT_NODE_ARGS ?? '').split(' ').filter((x) => x !== '')
  // VMTB_DAEMON_BIN runs another build of the daemon (e.g. a patched copy of the tree) for experiments.
  const bin = process.env.VMTB_DAEMON_BIN ?? DAEMON_BIN
  // The agent's environment (bin/v8-flags.js's AGENT_ENV, as bin/vmthunderd.js's first line sets it), and
  // VMTB_AGENT_ENV ("NAME=value NAME=value", e.g. GLIBC_TUNABLES=...) over it: for experiments.
  const extraEnv = Object.fromEntries((process.env.VMTB_AGENT_ENV ?? '').split(' ').filter((x) => x.includes('=')).map((x) => [x.slice(0, x.indexOf('=')), x.slice(x.indexOf('=') + 1)]))
  const c = nsSpawn(a.node.ns, process.execPath, [...AGENT_NODE_FLAGS, ...nodeArgs, bin, ...a.args], { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'], env: { ...agentEnvOf(process.env), ...extraEnv } })
  started.add(c)
  c.once('close', () => started.delete(c))
  const log: WriteStream = createWriteStream(join(logDir, `${a.name}.log`), { flags: 'a' })
  let seen = ''
  let ok = false
  return await new Promise<ChildProcess>((resolve, reject) => {
    const cleanup = (): void => { clearTimeout(timer); signal.removeEventListener('abort', onAbort) }
    const onData = (b: Buffer): void => {
      log.write(b)
      if (ok) return
      seen = (seen + b.toString()).slice(-20_000)
      if (seen.includes('"message":"vmthunderd started"')) { ok = true; cleanup(); resolve(c) }
    }
    const onAbort = (): void => { cleanup(); c.kill('SIGKILL'); reject(signal.reason) }
    const timer = setTimeout(() => { cleanup(); c.kill('SIGKILL'); reject(new BenchError(`agent ${a.name} did not start in ${AGENT_START_TIMEOUT_MS} ms: ${seen.slice(-2000)}`)) }, AGENT_START_TIMEOUT_MS)
    c.stdout?.on('data', onData)
    c.stderr?.on('data', onData)
    c.once('close', (code) => {
      log.end()
      if (!ok) { cleanup(); reject(new BenchError(`agent ${a.name} exited (${String(code)}) before starting: ${seen.slice(-2000)}`)) }
    })
    signal.addEventListener('abort', onAbort, { once: true })
  })
}

async function startAgent (name: string, node: TestbedNode, dir: string, extraArgs: string[], ctx: SystemContext, logDir: string): Promise<Agent> {
  await mkdir(dir, { recursive: true })
  const socket = join(dir, 'ctl.sock')
  const a = {
    name,
    node,
    dir,
    socket,
    nbdSocket: join(dir, 'nbd.sock'),
    args: ['--data-dir', join(dir, 'data'), '--socket', socket, '--listen', `/ip4/${node.ip}/tcp/0`, ...extraArgs]
  }
  return { ...a, proc: await spawnAgent(a, logDir, ctx.signal) }
}

const WARM_UP_IMAGE_ID = 'warmup'
const PERF_FREQUENCY_HZ = 499
const PERF_STOP_TIMEOUT_MS = 60_000

interface PerfRun {
  /** Stops perf; returns the host agents' samples (`pids`) by activity, as shares of them all. */
  stop: (pids: ReadonlySet<number>) => Promise<PerfActivity>
}

export interface PerfActivity {
  samples: number
  /** activity -> share of the host agents' samples (0..1) */
  shares: Record<string, number>
  /** The JavaScript functions most often innermost on the stack: [function, share of all samples] */
  topJsFunctions: Array<[string, number]>
}
const PERF_TOP_JS_FUNCTIONS = 25

/** perf record (call graphs) of the agents' processes, into `out`, until stopped. */
function startPerf (agents: Agent[], out: string): PerfRun {
  const pids = agents.map((a) => a.proc.pid).filter((p): p is number => p !== undefined)
  const rec = spawn('perf', ['record', '-g', '-F', String(PERF_FREQUENCY_HZ), '-o', out, '-p', pids.join(',')], { stdio: ['ignore', 'ignore', 'pipe'] })
  started.add(rec)
  let stderr = ''
  rec.stderr?.on('data', (b: Buffer) => { stderr = (stderr + b.toString()).slice(-4000) })
  const exited = new Promise<void>((resolve) => { rec.once('close', () => { started.delete(rec); resolve() }) })
  return {
    stop: async (hostPids) => {
      rec.kill('SIGINT')
      const timer = setTimeout(() => { rec.kill('SIGKILL') }, PERF_STOP_TIMEOUT_MS)
      await exited
      clearTimeout(timer)
      const script = spawn('perf', ['script', '-i', out, '-F', 'pid,tid,ip,sym,dso'], { stdio: ['ignore', 'pipe', 'ignore'] })
      started.add(script)
      const counter = new ActivityCounter(hostPids)
      for await (const line of createInterface({ input: script.stdout })) counter.line(line)
      started.delete(script)
      const { samples, byGroup, byJsFunction } = counter.result()
      if (samples === 0) throw new BenchError(`perf recorded no samples of the host agents: ${stderr.trim().slice(-500)}`)
      const shares: Record<string, number> = {}
      for (const name of [...ACTIVITY_GROUPS.map(([n]) => n), OTHER_ACTIVITY]) shares[name] = (byGroup.get(name) ?? 0) / samples
      if (process.env.VMTB_KEEP_PERF_MAPS !== '1') for (const pid of pids) await rm(`/tmp/perf-${pid}.map`, { force: true })
      const topJsFunctions = [...byJsFunction].sort((a, b) => b[1] - a[1]).slice(0, PERF_TOP_JS_FUNCTIONS).map(([f, n]): [string, number] => [f, n / samples])
      return { samples, shares, topJsFunctions }
    }
  }
}

/**
 * The warm-up wave (--warm-up): the origin registers a second image of the trace (other content, so nothing of
 * it is shared with the measured image), every host creates an instance of it, replays the trace over its
 * agent's NBD socket at once, and destroys it; then every agent drops the image, so that neither its prefetch
 * nor its adverts run into the measured wave.
 */
async function warmUp (ctx: SystemContext, origin: Agent, hosts: Agent[]): Promise<void> {
  const t0 = performance.now()
  const path = join(ctx.workDir, 'warmup-image.raw')
  await makeTraceImage(path, ctx.reads, ctx.imageBytes)
  await rpc(origin, 'image.register', { id: WARM_UP_IMAGE_ID, path }, 300_000)
  await Promise.all(hosts.map(async (h, i) => {
    const name = `warm-h${i + 1}`
    await rpc(h, 'instance.create', { name, image: WARM_UP_IMAGE_ID }, 120_000)
    const conn = await nbdConnect({ socketPath: h.nbdSocket, exportName: WARM_UP_IMAGE_ID }, { signal: ctx.signal })
    try {
      await replayNbd(ctx.reads, conn, ctx.signal)
    } finally {
      await conn.close()
    }
    await rpc(h, 'instance.destroy', { name }, 60_000)
  }))
  await Promise.all([...hosts, origin].map(async (a) => { await rpc(a, 'image.remove', { id: WARM_UP_IMAGE_ID }, 60_000) }))
  await rm(path, { force: true })
  ctx.log(`vmthunderd: warm-up wave (another image, same trace) done in ${secs(performance.now() - t0)} s`)
}

interface ProcUsage { cpuMs: number, minorFaults: number }

/**
 * A process's CPU time so far (user + system, ms) and minor page faults, from /proc/PID/stat (zeros once it is
 * gone). Faults are counted
 * because on this machine kind a page touched for the first time costs ~10 us: a host agent's
 * first touches of the blocks it holds until their commit are ~6 % of its CPU in the 8-host wave.
 */
async function procUsageOf (pid: number | undefined): Promise<ProcUsage> {
  if (pid === undefined) return { cpuMs: 0, minorFaults: 0 }
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8')
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    // Fields from the state on (stat field 3): minflt is field 10, utime and stime 14 and 15 (ticks of 10 ms).
    return { cpuMs: (Number(f[11]) + Number(f[12])) * 10, minorFaults: Number(f[7]) }
  } catch { return { cpuMs: 0, minorFaults: 0 } }
}

/** The machine's CPU line of /proc/stat (user nice system idle iowait irq softirq ..., in USER_HZ 100 ticks), or undefined where unreadable. */
async function procStatCpu (): Promise<number[] | undefined> {
  try {
    return (await readFile('/proc/stat', 'utf8')).split('\n', 1)[0].trim().split(/\s+/).slice(1).map(Number)
  } catch {
    return undefined
  }
}

/**
 * CPU-ms the whole machine spent busy since boot (user, nice, system, irq, softirq). GO to done, less the agents'
 * own CPU, it is what else loaded the same cores: the hosts' replay drivers (one NBD client process per host),
 * the kernel's veth and tc path, the bench itself.
 */
async function machineBusyMs (): Promise<number | undefined> {
  const t = await procStatCpu()
  return t === undefined ? undefined : (t[0] + t[1] + t[2] + t[5] + t[6]) * 10
}

/** CPU-seconds spent at a positive nice level since boot, or undefined where unreadable. */
async function niceCpuS (): Promise<number | undefined> {
  const t = await procStatCpu()
  return t === undefined ? undefined : t[1] / 100
}

/**
 * True when the kernel schedules by autogroup: each session's processes share one CPU weight, so nice only ranks
 * processes within their session and a nice-19 job started from another session competes at full weight.
 */
async function autogroupOn (): Promise<boolean> {
  try { return (await readFile('/proc/sys/kernel/sched_autogroup_enabled', 'utf8')).trim() === '1' } catch { return false }
}

/** SIGKILL, as a crash; resolves once the process is gone. */
async function killAgent (a: Agent): Promise<void> {
  const closed = new Promise<void>((resolve) => { a.proc.once('close', () => { resolve() }) })
  a.proc.kill('SIGKILL')
  await closed
}

/** Rewrites the agent's `--listen .../tcp/0` to the port it got, for restarts. */
async function pinListenPort (a: Agent): Promise<void> {
  const st = await rpc(a, 'node.status')
  const mine = (st.listenAddrs as string[]).find((x) => x.includes(`/ip4/${a.node.ip}/tcp/`))
  const port = mine?.match(/\/tcp\/(\d+)/)?.[1]
  if (port === undefined) throw new BenchError(`${a.name} listens on no ${a.node.ip} address: ${JSON.stringify(st.listenAddrs)}`)
  const at = a.args.indexOf('--listen')
  a.args[at + 1] = `/ip4/${a.node.ip}/tcp/${port}`
}

const rpc = async (a: Agent, method: string, params: Record<string, unknown> = {}, timeoutMs = AGENT_RPC_TIMEOUT_MS): Promise<any> =>
  await callRpc(a.socket, method, params, { timeoutMs })

function mergeConfig (base: Record<string, unknown>, over: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...base }
  for (const [k, v] of Object.entries(over)) {
    const b = out[k]
    out[k] = v !== null && typeof v === 'object' && !Array.isArray(v) && b !== null && typeof b === 'object' && !Array.isArray(b)
      ? mergeConfig(b as Record<string, unknown>, v as Record<string, unknown>)
      : v
  }
  return out
}

/**
 * --vmt-profile: a boot profile of the image made from the trace (what the origin's recorder would have learned
 * from one earlier boot of it), imported into the origin before GO; the hosts fetch it as agents of a swarm do
 * (its version is in the origin's adverts; /vmthunder/profile/1).
 */
async function importTraceProfile (ctx: SystemContext, origin: Agent): Promise<void> {
  const images = await rpc(origin, 'image.list') as unknown as Array<{ id: string, root: string, blockSizeBytes: number, cache: { blockCount: number } }>
  const image = images.find((x) => x.id === IMAGE_ID)
  if (image === undefined) throw new BenchError(`the origin lists no image ${IMAGE_ID}`)
  const recorder = createRecorder({ imageId: IMAGE_ID, rootHex: image.root, blockSizeBytes: image.blockSizeBytes, blockCount: image.cache.blockCount, instanceStartMs: 0 })
  for (const r of ctx.reads) recorder.noteRead(r.timeMs, r.offset, r.length)
  const imported = await rpc(origin, 'image.profile.import', { id: IMAGE_ID, profile: profileToJson(recorder.toProfile()) })
  ctx.log(`origin holds a boot profile of the image: ${String(imported.entries)} blocks in read order`)
}

/**
 * vmthunderd on the testbed: the origin agent (origin namespace) registers the image; one agent per host (its
 * namespace, listening on the host's address) bootstraps from the origin and trusts its key. All are started,
 * connected and the image registered before GO; each host's driver creates its instance at GO (--vmt-create
 * before: while preparing) and replays over its own agent's NBD socket. With `failure`, one relay is killed.
 */
function vmthunderd (variant: { prefetch: boolean, failure: boolean, name: SystemName, churn?: 'hosts' | 'hosts+origin' }) {
  return async (ctx: SystemContext): Promise<SystemRun> => {
    const { tb } = ctx
    const base = join(ctx.workDir, variant.name)
    await rm(base, { recursive: true, force: true })
    const logDir = join(ctx.logDir, variant.name)
    await rm(logDir, { recursive: true, force: true })
    const configPath = join(base, 'config.json')
    await mkdir(base, { recursive: true })
    // Only what differs from the daemon's defaults: the headline figures are the config a user runs.
    await writeFile(configPath, JSON.stringify(mergeConfig(variant.prefetch ? {} : { prefetch: { enabled: false } }, ctx.vmtConfig)) + '\n')
    const agents: Agent[] = []
    const stopAll = async (): Promise<void> => { await Promise.all(agents.map(async (a) => { await stopProc(a.proc, 10_000) })) }
    try {
      const origin = await startAgent('origin', tb.origin, join(base, 'origin'), ['--config', configPath, '--allow-image-dir', dirname(ctx.image)], ctx, logDir)
      agents.push(origin)
      const t0 = performance.now()
      await rpc(origin, 'image.register', { id: IMAGE_ID, path: ctx.image })
      ctx.log(`${variant.name}: origin registered the image in ${secs(performance.now() - t0)} s`)
      if (ctx.vmtProfile === true) await importTraceProfile(ctx, origin)
      const os = await rpc(origin, 'node.status')
      const originPeer = os.peerId as string
      const addr = (os.listenAddrs as string[]).find((a) => a.includes(`/ip4/${tb.origin.ip}/tcp/`))
      if (addr === undefined) throw new BenchError(`origin agent listens on no ${tb.origin.ip} address: ${JSON.stringify(os.listenAddrs)}`)
      const bootstrap = addr.includes('/p2p/') ? addr : `${addr}/p2p/${originPeer}`
      const hostArgs = ['--config', configPath, '--bootstrap', bootstrap, '--trust', os.publicKey as string]
      const hosts = await Promise.all(tb.hosts.map(async (h, i) => await startAgent(`h${i + 1}`, h, join(base, `h${i + 1}`), hostArgs, ctx, logDir)))
      agents.push(...hosts)
      // Every host connected to the origin before GO (bounded poll: connection is the agents' business).
      for (let tries = 0; ; tries++) {
        const st = await Promise.all(hosts.map(async (h) => await rpc(h, 'node.status')))
        // p2p.peers is a count; before any image is shared the only peer a host can know is its bootstrap.
        if (st.every((x) => Number(x.p2p?.peers ?? 0) >= 1)) break
        if (tries >= 300) throw new BenchError('hosts did not connect to the origin agent within 30 s')
        await new Promise((resolve) => setTimeout(resolve, 100))
      }
      ctx.log(`${variant.name}: origin and ${hosts.length} agents up and connected`)
      // A restarted agent listens on the port it had (a host's agent has a fixed port, config p2p.listen): the
      // others re-dial the address they know, the hosts the origin's bootstrap address.
      await Promise.all(agents.map(async (a) => { await pinListenPort(a) }))

      const nameOf = async (): Promise<Map<string, string>> => {
        const m = new Map<string, string>([[originPeer, 'origin']])
        for (const h of hosts) m.set((await rpc(h, 'node.status')).peerId as string, h.name)
        return m
      }
      if (ctx.warmUp) await warmUp(ctx, origin, hosts)
      const names = await nameOf()
      let failure: FailureReport | undefined
      let usageAtGo = new Map<string, ProcUsage>()
      const usageNow = async (): Promise<Map<string, ProcUsage>> => new Map(await Promise.all(agents.map(async (a) => [a.name, await procUsageOf(a.proc.pid)] as const)))

      let perfRun: PerfRun | undefined
      const afterGo = async (signal: AbortSignal, control: HostControl): Promise<void> => {
        usageAtGo = await usageNow()
        if (ctx.perf) perfRun = startPerf(agents, join(dirname(ctx.logDir), 'perf.data'))
        if (variant.failure) await killRelay(signal, control)
        if (variant.churn !== undefined) await runChurn(signal, control)
      }
      let churn: ChurnReport | undefined
      /**
       * Churn: victims (a quarter of the hosts, at least one; then the origin, with 'hosts+origin') each get
       * SIGKILL CHURN_KILLS_PER_VICTIM times, CHURN_GAP_MS apart at random, and are restarted at once as a
       * service manager would. Host victims run concurrently; the origin's kills come after theirs. A victim
       * whose host finished is spared (its VM booted; killing it then tests nothing of the wave).
       */
      const runChurn = async (signal: AbortSignal, control: HostControl): Promise<void> => {
        const goMs = performance.now()
        const random = seededRandom(ctx.seed)
        const victimCount = Math.max(1, Math.floor(hosts.length / 4))
        const order = hosts.map((_, i) => i)
        for (let i = order.length - 1; i > 0; i--) { const j = Math.floor(random() * (i + 1)); [order[i], order[j]] = [order[j], order[i]] }
        const victims = order.slice(0, victimCount)
        churn = { seed: ctx.seed, kills: [], maxReadMsPerHost: [], churnedHosts: victims.map((i) => hosts[i].name), servesAgain: [] }
        let finished = false
        void control.allDone.finally(() => { finished = true }).catch(() => {})
        const pause = async (): Promise<void> => {
          const ms = CHURN_GAP_MS[0] + random() * (CHURN_GAP_MS[1] - CHURN_GAP_MS[0])
          await new Promise<void>((resolve) => { const t = setTimeout(resolve, ms); signal.addEventListener('abort', () => { clearTimeout(t); resolve() }, { once: true }) })
        }
        const killAndRestart = async (a: Agent): Promise<void> => {
          const killedAt = performance.now()
          await killAgent(a)
          a.proc = await spawnAgent(a, logDir, signal)
          const kill = { agent: a.name, atMs: Math.round(killedAt - goMs), restartMs: Math.round(performance.now() - killedAt) }
          churn?.kills.push(kill)
          ctx.log(`${variant.name}: ${a.name}'s agent killed at ${secs(kill.atMs)} s, up again after ${secs(kill.restartMs)} s`)
        }
        // A host's driver creates its instance at GO and cannot resume a create its agent died in: the first
        // kill waits until the instance exists (polled, bounded by the run).
        const instanceExists = async (i: number): Promise<boolean> => {
          const list = await rpc(hosts[i], 'instance.list', {}, 5000).catch(() => undefined) as { instances?: Array<{ name: string }> } | Array<{ name: string }> | undefined
          const entries = Array.isArray(list) ? list : list?.instances ?? []
          return entries.some((x) => x.name === `vm-h${i + 1}`)
        }
        await Promise.all(victims.map(async (i) => {
          while (!finished && !signal.aborted && !(await instanceExists(i))) await new Promise((resolve) => setTimeout(resolve, FAILURE_POLL_MS))
          for (let k = 0; k < CHURN_KILLS_PER_VICTIM; k++) {
            await pause()
            if (finished || signal.aborted || control.doneHosts.has(i)) return
            await killAndRestart(hosts[i])
            control.tell(i, 'RESUME')
          }
        }))
        if (variant.churn === 'hosts+origin') {
          for (let k = 0; k < CHURN_KILLS_PER_VICTIM; k++) {
            await pause()
            if (finished || signal.aborted) break
            await killAndRestart(origin)
          }
        }
        if (churn.kills.length === 0) churn.note = 'every host finished before the first kill was due: nothing was killed'
      }
      const killRelay = async (signal: AbortSignal, control: HostControl): Promise<void> => {
          const goMs = performance.now()
          let finished = false
          void control.allDone.finally(() => { finished = true }).catch(() => {})
          failure = { killedHost: null }
          while (!finished && !signal.aborted) {
            const st = await Promise.all(hosts.map(async (h) => await rpc(h, 'node.status', {}, 5000).catch(() => undefined)))
            // relay host index -> its children (not done yet) that have read through it
            const through = new Map<number, string[]>()
            st.forEach((x, yi) => {
              const img = x?.images?.[IMAGE_ID]
              if (img === undefined || control.doneHosts.has(yi)) return
              for (const p of (img.parents ?? []) as string[]) {
                const xi = hosts.findIndex((h) => h.name === names.get(p))
                if (xi >= 0 && ((img.bytesReceivedByPeer ?? {})[p] ?? 0) > 0) through.set(xi, [...(through.get(xi) ?? []), hosts[yi].name])
              }
            })
            if (through.size > 0) {
              const [xi, children] = [...through.entries()].sort((a, b) => b[1].length - a[1].length)[0]
              const victim = hosts[xi]
              const killedAt = performance.now()
              await killAgent(victim)
              failure = { killedHost: victim.name, killedAtMs: Math.round(killedAt - goMs), childrenAtKill: children }
              ctx.log(`${variant.name}: killed ${victim.name}'s agent (SIGKILL) at ${secs(killedAt - goMs)} s; children that read through it: ${children.join(', ')}`)
              // Restarted at once, as a service manager would; its host's driver resumes on the same export.
              victim.proc = await spawnAgent(victim, logDir, signal)
              failure.restartMs = Math.round(performance.now() - killedAt)
              ctx.log(`${variant.name}: ${victim.name}'s agent restarted in ${secs(failure.restartMs)} s`)
              control.tell(xi, 'RESUME')
              return
            }
            await new Promise((resolve) => setTimeout(resolve, FAILURE_POLL_MS))
          }
          failure.note = 'no host had read through another host before all finished: nothing was killed'
        }

      return {
        hostArgs: (i) => ['vmt', '--rpc', hosts[i].socket, '--socket', hosts[i].nbdSocket, '--export', IMAGE_ID, '--name', `vm-h${i + 1}`, '--create', ctx.vmtCreate],
        afterGo,
        report: async (done) => {
          const usageEnd = await usageNow()
          const perfActivity = perfRun === undefined ? undefined : await perfRun.stop(new Set(hosts.map((h) => h.proc.pid ?? -1)))
          const restarted = new Set(churn?.kills.map((k) => k.agent) ?? [])
          // A killed or restarted agent's process is a new one since GO: all its usage counts.
          const sameProcess = (name: string): boolean => failure?.killedHost !== name && !restarted.has(name)
          const sinceGo = (name: string, key: keyof ProcUsage): number =>
            Math.max(0, (usageEnd.get(name)?.[key] ?? 0) - (sameProcess(name) ? usageAtGo.get(name)?.[key] ?? 0 : 0))
          const cpuOf = (name: string): number => sinceGo(name, 'cpuMs')
          const names2 = await nameOf()
          const agentsOut: AgentReport[] = []
          for (const [i, h] of hosts.entries()) {
            const st = await rpc(h, 'node.status')
            const img = st.images?.[IMAGE_ID] ?? {}
            const byPeer = (img.bytesReceivedByPeer ?? {}) as Record<string, number>
            const fromOrigin = byPeer[originPeer] ?? 0
            agentsOut.push({
              host: h.name,
              parents: ((img.parents ?? []) as string[]).map((p) => names2.get(p) ?? p.slice(-8)),
              depth: img.depth ?? null,
              bytesFromOrigin: fromOrigin,
              bytesFromPeers: Object.values(byPeer).reduce((a, b) => a + b, 0) - fromOrigin,
              bytesSent: img.bytesSent ?? 0,
              cpuMs: cpuOf(h.name),
              startupCpuMs: usageAtGo.get(h.name)?.cpuMs,
              ...(sameProcess(h.name) ? { pageFaults: sinceGo(h.name, 'minorFaults') } : {}),
              createMs: done[i].fetchMs === undefined ? undefined : Math.round(done[i].fetchMs),
              maxReadMs: Math.round(done[i].maxReadMs),
              firstReadMs: done[i].firstReadMs === undefined ? undefined : Math.round(done[i].firstReadMs),
              advertsPublished: img.advertsPublished,
              prefetchedBytes: img.prefetch?.prefetchedBytes,
              readsLocal: img.prefetch?.readsLocal,
              readsFetched: img.prefetch?.readsFetched,
              blockRequests: st.p2p?.blockRequests,
              dataChannels: st.p2p?.dataChannels
            })
          }
          if (failure?.killedHost !== undefined && failure.killedHost !== null) {
            const ki = hosts.findIndex((h) => h.name === failure?.killedHost)
            const finiteMax = (xs: number[]): number | undefined => { const f = xs.filter((x) => Number.isFinite(x)); return f.length === 0 ? undefined : Math.round(Math.max(...f)) }
            failure.survivorsMaxReadMs = finiteMax(done.filter((_, i) => i !== ki).map((d) => d.maxReadMs))
            failure.killedHostMaxReadMs = finiteMax([done[ki].maxReadMs])
          }
          const originImg = (await rpc(origin, 'node.status')).images?.[IMAGE_ID] ?? {}
          if (churn !== undefined) {
            churn.maxReadMsPerHost = done.map((d) => Math.round(d.maxReadMs))
            // Tell churn stalls from load stalls: a slow read (GO-relative) that overlaps a kill window, or none.
            const windows = churn.kills.map((k) => [k.atMs, k.atMs + k.restartMs + CHURN_WINDOW_AFTER_MS] as const)
            const longest = (reads: SlowRead[], overlapping: boolean): number | null => {
              let best: number | null = null
              for (const r of reads) {
                const hits = windows.some(([from, to]) => r.atMs < to && r.atMs + r.ms > from)
                if (hits === overlapping && (best === null || r.ms > best)) best = r.ms
              }
              return best
            }
            const goRelative = (d: HostDone): SlowRead[] => (d.slowReads ?? []).map((r) => ({ atMs: r.atMs + (d.fetchMs ?? 0), ms: r.ms }))
            churn.churnStallMsPerHost = done.map((d) => longest(goRelative(d), true))
            churn.otherStallMsPerHost = done.map((d) => longest(goRelative(d), false))
            // Counters start again at a restart: what a restarted agent sent, it sent since its last start.
            for (const name of restarted) {
              const sent = name === 'origin' ? Number(originImg.bytesSent ?? 0) : agentsOut.find((a) => a.host === name)?.bytesSent ?? 0
              const hi = hosts.findIndex((h) => h.name === name)
              churn.servesAgain.push({ agent: name, sentToPeersBytes: sent, exportServed: hi < 0 ? null : Number.isFinite(done[hi].maxReadMs) && (done[hi].reconnects ?? 0) > 0 })
            }
          }
          const cpus = agentsOut.map((a) => a.cpuMs)
          const movedBytes = agentsOut.reduce((sum, a) => sum + a.bytesFromOrigin + a.bytesFromPeers + a.bytesSent, 0) + Number(originImg.bytesSent ?? 0)
          const startups = agentsOut.map((a) => a.startupCpuMs).filter((x): x is number => x !== undefined)
          const faults = agentsOut.map((a) => a.pageFaults).filter((x): x is number => x !== undefined)
          return {
            agents: agentsOut,
            originCpuMs: cpuOf('origin'),
            cpuPerHostMedianMs: Math.round(median(cpus)),
            cpuPerHostMaxMs: Math.max(0, ...cpus),
            ...(startups.length > 0 ? { startupCpuMedianMs: Math.round(median(startups)) } : {}),
            ...(faults.length > 0 ? { pageFaultsPerHostMedian: Math.round(median(faults)) } : {}),
            ...(movedBytes > 0 ? { cpuMsPerMiBMoved: Math.round(100 * (cpus.reduce((a, b) => a + b, 0) + cpuOf('origin')) / (movedBytes / 2 ** 20)) / 100 } : {}),
            ...(failure !== undefined ? { failure } : {}),
            ...(churn !== undefined ? { churn } : {}),
            ...(perfActivity !== undefined ? { perfActivity } : {})
          }
        },
        stop: stopAll
      }
    } catch (err) {
      await stopAll()
      throw err
    }
  }
}

const SYSTEMS: Record<SystemName, (ctx: SystemContext) => Promise<SystemRun | undefined>> = {
  vmthunderd: vmthunderd({ name: 'vmthunderd', prefetch: true, failure: false }),
  'vmthunderd-failure': vmthunderd({ name: 'vmthunderd-failure', prefetch: true, failure: true }),
  'vmthunderd-noprefetch': vmthunderd({ name: 'vmthunderd-noprefetch', prefetch: false, failure: false }),
  'vmthunderd-churn': vmthunderd({ name: 'vmthunderd-churn', prefetch: true, failure: false, churn: 'hosts' }),
  'vmthunderd-churn-origin': vmthunderd({ name: 'vmthunderd-churn-origin', prefetch: true, failure: false, churn: 'hosts+origin' }),
  nbdkit: runNbdkit,
  http: runHttp,
  bittorrent: runBittorrent
}

// ---------------------------------------------------------------------------------------------------------
// One run of one system

/** Where a think-time run's seconds added went on the slowest host: before its replay, and in it. */
function thinkSplit (split: SystemResult['slowestSplit'], localMs: number): string {
  if (split === undefined) return ''
  const before = split.createMs !== undefined
    ? `instance.create ${secs(split.createMs)} s, then the NBD connect ${secs(split.beforeReplayMs - split.createMs)} s`
    : `the NBD connect ${secs(split.beforeReplayMs)} s`
  const late = split.replayMs - localMs
  return ` (before its replay: ${before}; its replay ${late >= 0 ? '+' : '-'}${secs(Math.abs(late))} s against the local one)`
}

/** slowReads: reads over SLOW_READ_MS, atMs from the replay's start (the vmt driver starts it fetchMs after GO). */
interface HostDone { doneMs: number, fetchMs?: number, replayMs: number, maxReadMs: number, firstReadMs?: number, readMsP50?: number, readMsP90?: number, bytes: number, digest: string, reconnects?: number, slowReads?: SlowRead[], error?: string }

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
      drivers.push(startIn(h.ns, process.execPath, ['--import', 'tsx', HOST_DRIVER, ...sys.hostArgs(i, h), '--trace', trace, ...(ctx.think ? ['--think', '1'] : [])], { cwd: REPO_ROOT, stdin: true }))
    }
    await Promise.all(drivers.map((d) => waitForLine(d, (l) => l === 'READY', READY_TIMEOUT_MS, ctx.signal)))
    const originBefore = await linkCounters(tb.origin.ns)
    const hostsBefore = await Promise.all(tb.hosts.map((h) => linkCounters(h.ns)))
    const doneHosts = new Set<number>()
    // A host that fails (e.g. its VM got EIO) is reported, not fatal: the others run to the end.
    const dones = drivers.map((d, i) => waitForLine(d, (l) => l.startsWith('DONE '), timeoutMs, ctx.signal)
      .then((l) => JSON.parse(l.slice(5)) as HostDone)
      .catch((err: Error): HostDone => {
        if (ctx.signal.aborted) throw err
        log(`${name}: h${i + 1} FAILED: ${err.message.slice(0, 300)}`)
        return { doneMs: NaN, replayMs: NaN, maxReadMs: NaN, bytes: 0, digest: '', error: err.message.replace(/\s+/g, ' ').slice(0, 300) }
      })
      .finally(() => { doneHosts.add(i) }))
    dones.forEach((p) => p.catch(() => {}))
    const allDone = Promise.all(dones)
    allDone.catch(() => {})
    // Staggered starts are timers of the orchestrator; each host times itself from its own GO.
    const machineAtGoMs = await machineBusyMs()
    drivers.forEach((d, i) => {
      if (ctx.staggerMs === 0 || i === 0) d.stdin?.write('GO\n')
      else setTimeout(() => { d.stdin?.write('GO\n') }, i * ctx.staggerMs).unref()
    })
    log(`${name}: ${tb.hosts.length} hosts started`)
    const control: HostControl = { tell: (i, line) => { drivers[i].stdin?.write(line + '\n') }, allDone, doneHosts }
    const injected = sys.afterGo?.(ctx.signal, control) ?? Promise.resolve()
    const [results] = await Promise.all([allDone, injected])
    const machineDoneMs = await machineBusyMs()
    const originAfter = await linkCounters(tb.origin.ns)
    const hostsAfter = await Promise.all(tb.hosts.map((h) => linkCounters(h.ns)))
    const extra = await sys.report?.(results) ?? {}
    const perHostMs = results.map((r) => Math.round(r.doneMs))
    const finished = perHostMs.filter((ms) => Number.isFinite(ms))
    const fetches = results.map((r) => r.fetchMs).filter((x): x is number => x !== undefined)
    const slowest = results.reduce<HostDone | undefined>((a, r) => Number.isFinite(r.doneMs) && (a === undefined || r.doneMs > a.doneMs) ? r : a, undefined)
    const failedHosts = results.flatMap((r, i) => r.error !== undefined ? [{ host: `h${i + 1}`, error: r.error }] : [])
    return {
      maxMs: Math.max(0, ...finished),
      medianMs: Math.round(median(finished)),
      ...(failedHosts.length > 0 ? { failedHosts } : {}),
      originBytes: originAfter.txBytes - originBefore.txBytes,
      hostBytesMedian: median(hostsAfter.map((a, i) => a.rxBytes - hostsBefore[i].rxBytes)),
      perHostMs,
      ...(fetches.length > 0 ? { fetchMedianMs: Math.round(median(fetches)) } : {}),
      ...(slowest !== undefined && Number.isFinite(slowest.replayMs)
        ? { slowestSplit: { ...(slowest.fetchMs !== undefined ? { createMs: Math.round(slowest.fetchMs) } : {}), beforeReplayMs: Math.round(slowest.doneMs - slowest.replayMs), replayMs: Math.round(slowest.replayMs) } }
        : {}),
      maxReadMs: Math.round(Math.max(0, ...results.map((r) => r.maxReadMs).filter((ms) => Number.isFinite(ms)))),
      readMsP50: Math.round(median(results.map((r) => r.readMsP50 ?? NaN).filter((ms) => Number.isFinite(ms))) * 100) / 100,
      readMsP90: Math.round(median(results.map((r) => r.readMsP90 ?? NaN).filter((ms) => Number.isFinite(ms))) * 100) / 100,
      dataOk: results.every((r) => r.digest === refDigest),
      perHostRxBytes: hostsAfter.map((a, i) => a.rxBytes - hostsBefore[i].rxBytes),
      ...(machineAtGoMs !== undefined && machineDoneMs !== undefined ? { machineCpuMs: machineDoneMs - machineAtGoMs } : {}),
      ...extra
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
/** The hosts' block requests summed: how many, and how many were hedged, cancelled, failed over, or duplicated. */
const requestTotals = (agents: AgentReport[]): string => {
  const sum = (k: keyof NonNullable<AgentReport['blockRequests']>): number => agents.reduce((a, x) => a + (x.blockRequests?.[k] ?? 0), 0)
  const channels = agents.reduce((a, x) => a + (x.dataChannels?.outbound ?? 0), 0)
  return `${sum('requests')} (hedged ${sum('hedges')}, cancelled ${sum('cancelled')}, failed over ${sum('failovers')}, blocks received twice ${sum('duplicateBlocks')}); ` +
    `links to peers on a data channel at the end, all hosts: ${channels}`
}
/** The median host's share of VM reads that found every block local. */
const medianLocalShare = (agents: AgentReport[]): string => {
  const shares = agents.filter((a) => (a.readsLocal ?? 0) + (a.readsFetched ?? 0) > 0).map((a) => (a.readsLocal ?? 0) / ((a.readsLocal ?? 0) + (a.readsFetched ?? 0)))
  return shares.length === 0 ? '-' : `${Math.round(100 * median(shares))} %`
}
/** Share of a host's VM reads that found every block local. */
const localShare = (a: AgentReport): string => {
  const n = (a.readsLocal ?? 0) + (a.readsFetched ?? 0)
  return n === 0 ? '' : `${Math.round(100 * (a.readsLocal ?? 0) / n)} %`
}

export function markdownTable (r: BenchResults, command: string): string {
  const base = r.systems.nbdkit
  const ran = ALL_SYSTEMS.filter((n) => r.systems[n] !== undefined || r.skipped[n] !== undefined)
  const rows = ran.map((name) => {
    const s = r.systems[name]
    if (s === undefined) return `| ${name} | ${(r.skipped[name] ?? 'not run').startsWith('FAILED') ? '' : 'skipped: '}${r.skipped[name] ?? 'not run'} | | | | | | | |`
    const vs = base !== undefined ? `${(s.maxMs / base.maxMs).toFixed(2)}x` : 'n/a'
    const failed = s.failedHosts === undefined ? '' : ` (${s.failedHosts.length} of ${r.hosts} hosts FAILED)`
    return `| ${name} | ${secs(s.maxMs)}${failed} | ${secs(s.medianMs)} | ${vs} | ${mib(s.originBytes)} (${(s.originBytes / r.distinctBytes).toFixed(2)}x) | ${mib(s.hostBytesMedian)} | ${s.readMsP50 ?? ''} / ${s.readMsP90 ?? ''} / ${s.maxReadMs} | ${s.dataOk ? 'yes' : 'NO'} | ${s.loadAvg1?.map((l) => l.toFixed(1)).join(' / ') ?? ''} | ${s.niceCpuS ?? ''} |`
  })
  const details: string[] = []
  for (const name of ran) {
    const s = r.systems[name]
    if (s !== undefined && s.agents === undefined && s.machineCpuMs !== undefined) details.push('', `${name}: the machine, GO until done: ${secs(s.machineCpuMs)} CPU-s busy (the server, the replay drivers, the kernel's network path, this bench).`)
    if (s?.agents === undefined) continue
    const ms = (x: number | undefined): string => x === undefined || !Number.isFinite(x) ? '-' : String(Math.round(x))
    details.push('', `${name}, per host (parents and depth at the end of the run; bytes as the agents counted them):`, '',
      '| host | done (s) | create (s) | first read (ms) | longest read (ms) | eth0 rx MiB | from origin MiB | from peers MiB | of which prefetched MiB | reads local | sent to children MiB | agent CPU (s) | parents | depth |',
      '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |',
      ...s.agents.map((a, i) => `| ${a.host} | ${Number.isFinite(s.perHostMs[i]) ? secs(s.perHostMs[i]) : 'FAILED'} | ${a.createMs === undefined ? '' : secs(a.createMs)} | ${ms(a.firstReadMs)} | ${ms(a.maxReadMs)} | ${mib(s.perHostRxBytes[i])} | ${mib(a.bytesFromOrigin)} | ${mib(a.bytesFromPeers)} | ${a.prefetchedBytes === undefined ? '' : mib(a.prefetchedBytes)} | ${localShare(a)} | ${mib(a.bytesSent)} | ${secs(a.cpuMs)} | ${a.parents.join(', ') || '-'} | ${a.depth ?? '-'} |`),
      `| origin | | | | | | | | | | | ${secs(s.originCpuMs ?? 0)} | | 0 |`)
    if (s.cpuPerHostMedianMs !== undefined) {
      details.push('', `${name}: agent CPU per host per boot (from /proc, GO until every host was done): median ${secs(s.cpuPerHostMedianMs)} s, max ${secs(s.cpuPerHostMaxMs ?? 0)} s; ` +
        `start-up until GO, median ${secs(s.startupCpuMedianMs ?? 0)} s (not included); minor page faults per host agent, GO until done, median ${s.pageFaultsPerHostMedian ?? '-'}; ${s.cpuMsPerMiBMoved ?? '-'} CPU-ms per MiB moved (all agents' CPU over the bytes their p2p layers received and sent); ` +
        `adverts published per host agent (start to end, median): ${median(s.agents.map((a) => a.advertsPublished ?? 0))}; ` +
        `block requests to peers, all hosts: ${requestTotals(s.agents)}; VM reads that were local, median host: ${medianLocalShare(s.agents)}.` +
        (s.machineCpuMs === undefined ? '' : ` The machine, GO until done: ${secs(s.machineCpuMs)} CPU-s busy, of which the host agents ${secs(s.agents.reduce((a, x) => a + x.cpuMs, 0))}, the origin ${secs(s.originCpuMs ?? 0)}, the rest (replay drivers, kernel network path, this bench) ${secs(Math.max(0, s.machineCpuMs - s.agents.reduce((a, x) => a + x.cpuMs, 0) - (s.originCpuMs ?? 0)))}.`))
    }
    const pa = s.perfActivity
    const hostCpuMs = s.cpuPerHostMedianMs
    if (pa !== undefined && hostCpuMs !== undefined) {
      details.push('', `${name}: where the host agents' CPU went (perf record -g at ${PERF_FREQUENCY_HZ} Hz, GO until every host was done, ${pa.samples} samples; CPU-s per host = share x median host CPU):`, '',
        '| activity | share | CPU-s per host |', '| --- | --- | --- |',
        ...Object.entries(pa.shares).sort((a, b) => b[1] - a[1]).map(([k, v]) => `| ${k} | ${(100 * v).toFixed(1)} % | ${(v * hostCpuMs / 1000).toFixed(2)} |`),
        '', `${name}: the JavaScript functions most often innermost on the host agents' stacks (their own code and what they called into V8 and node for), share of all samples:`, '',
        '| function | share |', '| --- | --- |',
        ...pa.topJsFunctions.map(([f, v]) => `| ${f.replace(/\|/g, '\\|')} | ${(100 * v).toFixed(1)} % |`))
    }
    for (const fh of s.failedHosts ?? []) details.push('', `${name}: ${fh.host} failed: ${fh.error}`)
    const c = s.churn
    if (c !== undefined) {
      const hostsOut = s.agents.map((a, i) => ({ host: a.host, ms: c.maxReadMsPerHost[i], churnMs: c.churnStallMsPerHost?.[i] ?? '-', otherMs: c.otherStallMsPerHost?.[i] ?? '-' }))
      const survivors = hostsOut.filter((x) => !c.churnedHosts.includes(x.host))
      const churned = hostsOut.filter((x) => c.churnedHosts.includes(x.host))
      details.push('', `${name} (seed ${c.seed}): ${c.kills.length} kills (SIGKILL, restarted at once): ${c.kills.map((k) => `${k.agent} at ${secs(k.atMs)} s (up after ${secs(k.restartMs)} s)`).join(', ') || 'none'}. ` +
        `Longest read stall per host: ${[...survivors, ...churned].map((x) => `${x.host} ${ms(x.ms)} ms`).join(', ')}; ` +
        `hosts whose agent was not killed: max ${ms(Math.max(0, ...survivors.map((x) => x.ms)))} ms (goal <= 2000). ` +
        (c.churnStallMsPerHost !== undefined && c.otherStallMsPerHost !== undefined
          ? `Of those hosts' slow reads (over ${SLOW_READ_MS} ms), the longest that overlapped a kill (SIGKILL until ${CHURN_WINDOW_AFTER_MS / 1000} s after that agent was up): ` +
            `${survivors.map((x) => `${x.host} ${x.churnMs}`).join(', ')} ms; ` +
            `the longest that overlapped none (load, not churn): ${survivors.map((x) => `${x.host} ${x.otherMs}`).join(', ')} ms. `
          : '') +
        `Restarted agents serving again: ${c.servesAgain.map((x) => `${x.agent}: ${mib(x.sentToPeersBytes)} MiB to peers since restart${x.exportServed === null ? '' : x.exportServed ? ', its VM read on through it' : ', its VM did NOT read through it again'}`).join('; ')}. ` +
        `Data ${s.dataOk ? 'correct on every host' : 'WRONG on some host'}.${c.note !== undefined ? ` ${c.note}.` : ''}`)
    }
    const f = s.failure
    if (f !== undefined) {
      details.push('', f.killedHost === null
        ? `${name}: ${f.note ?? 'nothing killed'}.`
        : `${name}: ${f.killedHost}'s agent was killed (SIGKILL) ${secs(f.killedAtMs ?? 0)} s after GO while ${(f.childrenAtKill ?? []).join(', ')} read through it, and restarted (up again after ${secs(f.restartMs ?? 0)} s). ` +
          `Longest stall (single read) on the other hosts that finished: ${ms(f.survivorsMaxReadMs)} ms; on ${f.killedHost} (its agent restarting): ${ms(f.killedHostMaxReadMs)} ms. Data ${s.dataOk ? 'correct on every host' : 'WRONG on some host'}.`)
    }
  }
  return [
    `${r.hosts} hosts at ${r.rate} (origin ${r.originRate}), trace ${basename(r.trace)} (${mib(r.distinctBytes)} MiB distinct), image ${r.image ?? ''} ${mib(r.imageBytes)} MiB.${r.warmUp === true ? ' Agents warmed up: each host booted another image of the same trace before GO (--warm-up).' : ''}${r.vmtProfile === true ? ' The image was booted before: the origin held a boot profile of it, made from the trace (--vmt-profile).' : ''}${(r.staggerMs ?? 0) > 0 ? ` Staggered: host i started i x ${r.staggerMs} ms after the first; each host's time counts from its own start.` : ''}`,
    `Command: \`${command}\`${r.code !== undefined ? ` (code ${r.code})` : ''}`,
    ...(r.localThinkMs !== undefined ? [`Think times: every host reads at the trace's pace; a local file replay takes ${secs(r.localThinkMs)} s. Seconds added over it (slowest host): ${ran.filter((n) => r.systems[n] !== undefined).map((n) => `${n} +${secs(r.systems[n]!.maxMs - r.localThinkMs!)}${thinkSplit(r.systems[n]!.slowestSplit, r.localThinkMs!)}`).join(', ')}.`] : []),
    '',
    ...(r.autogroup === true ? ['', 'WARNING: the kernel schedules by autogroup (kernel.sched_autogroup_enabled=1): background work started from another session competes at full weight whatever its nice level, and the figures below move with it. `sysctl kernel.sched_autogroup_enabled=0` makes nice work again.'] : []),
    '',
    '| system | slowest host (s) | median host (s) | slowest vs nbdkit | origin sent MiB (x distinct) | MiB per host | read ms p50 / p90 / max | data ok | load avg (1 min) before / after | background CPU-s (nice > 0) |',
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |',
    ...rows,
    ...details,
    ''
  ].join('\n')
}

export function svgChart (r: BenchResults): string {
  const names = ALL_SYSTEMS.filter((n) => r.systems[n] !== undefined)
  const W = 640
  const rowH = 46
  const left = 150
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

function codeVersion (): string {
  try {
    const head = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: REPO_ROOT, timeout: 10_000 }).toString().trim()
    const dirty = execFileSync('git', ['status', '--porcelain', '--', 'src', 'config'], { cwd: REPO_ROOT, timeout: 10_000 }).toString().trim() !== ''
    return `${head}${dirty ? ' + uncommitted src changes' : ''}${process.env.VMTB_DAEMON_BIN !== undefined ? ` (daemon: ${process.env.VMTB_DAEMON_BIN})` : ''}`
  } catch { return 'unknown' }
}

function parseArgs (argv: string[]): Map<string, string> {
  const m = new Map<string, string>()
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    if (!a.startsWith('--')) throw new BenchError(`unexpected argument ${a}`)
    const [k, v] = a.includes('=') ? [a.slice(2, a.indexOf('=')), a.slice(a.indexOf('=') + 1)] : [a.slice(2), undefined]
    if (k === 'json' || k === 'think' || k === 'warm-up' || k === 'perf' || k === 'vmt-profile') { m.set(k, 'true'); continue }
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
  const think = args.get('think') === 'true'
  const staggerMs = Number(args.get('stagger-ms') ?? 0)
  if (!Number.isInteger(staggerMs) || staggerMs < 0 || staggerMs > 600_000) throw new Error('--stagger-ms must be an integer from 0 to 600000')
  const originRate = args.get('origin-rate') ?? rate
  const prefix = args.get('prefix') ?? 'vmtb'
  const trace = resolve(args.get('trace') ?? join(REPO_ROOT, 'test', 'fixtures', 'debian12-boot.reads.csv'))
  const json = args.get('json') === 'true'
  const outDir = resolve(args.get('out') ?? join(REPO_ROOT, 'results', `testbed-${hosts}h-${rate}`))
  const systems = (args.get('systems') ?? DEFAULT_SYSTEMS.join(',')).split(',') as SystemName[]
  const vmtConfig = args.has('vmt-config') ? JSON.parse(await readFile(resolve(args.get('vmt-config') as string), 'utf8')) as Record<string, unknown> : {}
  const vmtCreate = args.get('vmt-create') ?? 'at-go'
  const warmUpWave = args.has('warm-up')
  const vmtProfile = args.has('vmt-profile')
  const perf = args.has('perf')
  // Node writes /tmp/perf-PID.map for perf to name JIT-compiled functions.
  if (perf) process.env.VMTB_AGENT_NODE_ARGS = `${process.env.VMTB_AGENT_NODE_ARGS ?? ''} --perf-basic-prof`
  if (vmtCreate !== 'at-go' && vmtCreate !== 'before') throw new BenchError('--vmt-create takes at-go or before')
  const seed = args.has('seed') ? Number(args.get('seed')) : Math.floor(Math.random() * 2 ** 31)
  if (!Number.isSafeInteger(seed)) throw new BenchError('--seed takes an integer')
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
    workDir = await mkdtemp(join(tmpdir(), 'vmtb-bench-'))
    const wd = workDir
    const reads = await loadTrace(trace)
    // The image: 'trace' (default) generates a 1 GiB image with data in every block the trace reads (plus
    // 256 MiB elsewhere), so no read lands on a hole that a block-level system would not move; 'guest' is the
    // boot-test guest (the trace was not recorded on it: many of its reads fall on holes there); else a file.
    const imageArg = args.get('image') ?? 'trace'
    let image: string
    if (imageArg === 'trace') {
      image = join(wd, 'trace-image.raw')
      await makeTraceImage(image, reads, TRACE_IMAGE_BYTES)
    } else if (imageArg === 'guest') {
      image = (await buildGuest({ signal: ac.signal })).raw
    } else image = resolve(imageArg)
    const imageBytes = (await stat(image)).size
    const maxEnd = Math.max(...reads.map((r) => r.offset + r.length))
    if (maxEnd > imageBytes) throw new BenchError(`trace reads up to ${maxEnd} but the image has ${imageBytes} bytes`)
    const refDigest = (await replayFile(reads, image)).digest
    // With --think, the baseline for 'seconds added': the same paced replay from a local file, in this run.
    const localThinkMs = think ? (log('local replay with think times (the baseline)...'), (await replayFile(reads, image, ac.signal, { think: true })).elapsedMs) : undefined
    const distinct = distinctBytes(reads)
    tb = await testbedUp({ hosts, rate, originRate, prefix, signal: ac.signal })
    const ctx: SystemContext = { think, staggerMs, tb, image, imageBytes, workDir: wd, hostDir: (i) => join(wd, `h${i + 1}`), signal: ac.signal, logDir: join(outDir, 'logs'), vmtConfig, vmtCreate, warmUp: warmUpWave, vmtProfile, reads, perf, seed, log }
    // Bound per system: a few times the slowest plausible case (every host pulling the whole image from
    // the origin), at least 2 minutes.
    const originBps = tb.originRateBytesPerSec
    const timeoutMs = Number(args.get('timeout-s') ?? 0) * 1000 || Math.max(120_000, 3 * (hosts * imageBytes / originBps) * 1000)
    // vmthunderd moves about the trace's distinct bytes once per host at most: a run that has not finished in
    // 10 minutes is stuck (the failure run can be), not slow.
    const vmtTimeoutMs = Number(args.get('vmt-timeout-s') ?? 600) * 1000
    const results: BenchResults = { distinctBytes: distinct, hosts, rate, originRate, trace, imageBytes, image: imageArg, code: codeVersion(), think, warmUp: warmUpWave, vmtProfile, staggerMs, localThinkMs, autogroup: await autogroupOn(), systems: {}, skipped: {} }
    for (const name of ALL_SYSTEMS.filter((s) => systems.includes(s))) {
      log(`${name}: starting`)
      const load0 = loadavg()[0]
      const nice0 = await niceCpuS()
      let r: SystemResult | string
      try {
        r = await runSystem(name, ctx, trace, refDigest, name.startsWith('vmthunderd') ? vmtTimeoutMs : timeoutMs, log)
      } catch (err) {
        if (ac.signal.aborted) throw err
        r = `FAILED: ${(err as Error).message.replace(/\s+/g, ' ').slice(0, 400)}`
      }
      if (typeof r !== 'string') {
        r.loadAvg1 = [load0, loadavg()[0]]
        const nice1 = await niceCpuS()
        if (nice0 !== undefined && nice1 !== undefined) r.niceCpuS = Math.round((nice1 - nice0) * 10) / 10
      }
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
      const out = { distinctBytes: results.distinctBytes, systems: Object.fromEntries(Object.entries(results.systems).map(([k, v]) => [k, { maxMs: v.maxMs, medianMs: v.medianMs, originBytes: v.originBytes, cpuPerHostMedianMs: v.cpuPerHostMedianMs, cpuPerHostMaxMs: v.cpuPerHostMaxMs, cpuMsPerMiBMoved: v.cpuMsPerMiBMoved }])) }
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
