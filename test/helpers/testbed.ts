// Brings the multi-host testbed of scripts/testbed.sh up and down from tests and benchmarks, runs commands
// inside its namespaces, reads interface counters and measures TCP throughput between its nodes.
import { spawn, execFile, type ChildProcess, type SpawnOptions } from 'node:child_process'
import { join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

const REPO_ROOT = resolve(fileURLToPath(new URL('.', import.meta.url)), '..', '..')
export const TESTBED_SCRIPT = join(REPO_ROOT, 'scripts', 'testbed.sh')
const PROBE = join(REPO_ROOT, 'test', 'helpers', 'testbed-probe.ts')
const SCRIPT_TIMEOUT_MS = 60_000
const PROBE_TIMEOUT_MS = 70_000

export interface TestbedNode {
  /** The node's network namespace, e.g. vmtb-h1. Its link is eth0. */
  ns: string
  ip: string
  /** The peer end of the node's veth on the bridge (in bridgeNs): its egress is the node's download. */
  brDev: string
}

export interface TestbedInfo {
  prefix: string
  rate: string
  originRate: string
  rateBytesPerSec: number
  originRateBytesPerSec: number
  bridgeNs: string
  origin: TestbedNode
  hosts: TestbedNode[]
}

export interface Testbed extends TestbedInfo {
  down: (opts?: { signal?: AbortSignal }) => Promise<void>
}

export interface TestbedUpOptions {
  hosts?: number
  /** A tc rate: 1gbit, 100mbit... */
  rate?: string
  originRate?: string
  /** Namespace name prefix (1-8 lowercase letters/digits); default vmtb. */
  prefix?: string
  subnet?: string
  signal?: AbortSignal
  timeoutMs?: number
}

export class TestbedError extends Error {
  override name = 'TestbedError'
}

export class NsCommandError extends Error {
  override name = 'NsCommandError'
  /** True when the command was killed (timeout) rather than failing on its own. */
  killed = false
}

async function run (cmd: string, args: string[], opts: { signal?: AbortSignal, timeoutMs?: number, cwd?: string } = {}): Promise<{ stdout: string, stderr: string }> {
  return await new Promise((resolve, reject) => {
    execFile(cmd, args, { signal: opts.signal, timeout: opts.timeoutMs ?? SCRIPT_TIMEOUT_MS, maxBuffer: 16 * 1024 * 1024, cwd: opts.cwd }, (err, stdout, stderr) => {
      if (err != null) {
        if (opts.signal?.aborted === true) { reject(opts.signal.reason); return }
        const e = new NsCommandError(`${cmd} ${args.join(' ')} failed: ${err.message}\n${String(stderr).slice(-4000)}`)
        e.killed = (err as { killed?: boolean }).killed === true
        reject(e)
        return
      }
      resolve({ stdout: String(stdout), stderr: String(stderr) })
    })
  })
}

/** Brings a testbed up (scripts/testbed.sh up) and returns its layout; `down()` tears it down. */
export async function testbedUp (opts: TestbedUpOptions = {}): Promise<Testbed> {
  const args = [TESTBED_SCRIPT, 'up', '--json']
  if (opts.hosts !== undefined) args.push('--hosts', String(opts.hosts))
  if (opts.rate !== undefined) args.push('--rate', opts.rate)
  if (opts.originRate !== undefined) args.push('--origin-rate', opts.originRate)
  if (opts.prefix !== undefined) args.push('--prefix', opts.prefix)
  if (opts.subnet !== undefined) args.push('--subnet', opts.subnet)
  let out: string
  try {
    out = (await run('bash', args, { signal: opts.signal, timeoutMs: opts.timeoutMs })).stdout
  } catch (err) {
    // The script tears down after its own failures; a kill (timeout, abort) can stop it before that. A
    // refusal (e.g. this prefix is up already) must leave the running testbed alone.
    if (opts.signal?.aborted === true || (err instanceof NsCommandError && err.killed)) await testbedDown(opts.prefix).catch(() => {})
    throw err instanceof NsCommandError ? new TestbedError(err.message) : err
  }
  const info = JSON.parse(out.trim().split('\n').pop() ?? 'null') as TestbedInfo | null
  if (info === null) throw new TestbedError(`testbed.sh up printed no layout: ${out}`)
  return { ...info, down: async (o) => { await testbedDown(info.prefix, o) } }
}

/** Removes every namespace of the testbed with this prefix (and what runs inside); safe to repeat. */
export async function testbedDown (prefix = 'vmtb', opts: { signal?: AbortSignal } = {}): Promise<void> {
  await run('bash', [TESTBED_SCRIPT, 'down', '--prefix', prefix], { signal: opts.signal })
}

/** The layout of the testbed with this prefix, or undefined when it is down. */
export async function testbedStatus (prefix = 'vmtb', opts: { signal?: AbortSignal } = {}): Promise<TestbedInfo | undefined> {
  const { stdout } = await run('bash', [TESTBED_SCRIPT, 'status', '--json', '--prefix', prefix], { signal: opts.signal })
  const info = JSON.parse(stdout.trim()) as TestbedInfo | null
  return info ?? undefined
}

/** Network namespaces whose name starts with `${prefix}-`. */
export async function listNamespaces (prefix = 'vmtb', opts: { signal?: AbortSignal } = {}): Promise<string[]> {
  const { stdout } = await run('ip', ['netns', 'list'], { signal: opts.signal })
  return stdout.split('\n').map((l) => l.split(' ')[0]).filter((n) => n.startsWith(`${prefix}-`))
}

/** Starts `command args` inside namespace `ns` (ip netns exec). The caller owns the child. */
export function nsSpawn (ns: string, command: string, args: string[], opts: SpawnOptions = {}): ChildProcess {
  return spawn('ip', ['netns', 'exec', ns, command, ...args], { stdio: ['ignore', 'pipe', 'pipe'], ...opts })
}

/** Runs `command args` inside namespace `ns` to completion. */
export async function nsExec (ns: string, command: string, args: string[], opts: { signal?: AbortSignal, timeoutMs?: number } = {}): Promise<{ stdout: string, stderr: string }> {
  return await run('ip', ['netns', 'exec', ns, command, ...args], opts)
}

export interface LinkCounters { rxBytes: number, txBytes: number, rxPackets: number, txPackets: number }

/** Byte and packet counters of `dev` (default eth0) in namespace `ns`. */
export async function linkCounters (ns: string, dev = 'eth0', opts: { signal?: AbortSignal } = {}): Promise<LinkCounters> {
  const { stdout } = await run('ip', ['-n', ns, '-s', '-j', 'link', 'show', 'dev', dev], opts)
  const [link] = JSON.parse(stdout) as Array<{ stats64: { rx: { bytes: number, packets: number }, tx: { bytes: number, packets: number } } }>
  if (link === undefined) throw new NsCommandError(`no link ${dev} in ${ns}`)
  return { rxBytes: link.stats64.rx.bytes, txBytes: link.stats64.tx.bytes, rxPackets: link.stats64.rx.packets, txPackets: link.stats64.tx.packets }
}

/** Starts a node script (run through tsx, from the repo root) inside `ns`. */
export function nsNode (ns: string, script: string, args: string[], opts: SpawnOptions = {}): ChildProcess {
  return nsSpawn(ns, process.execPath, ['--import', 'tsx', script, ...args], { cwd: REPO_ROOT, ...opts })
}

function collect (child: ChildProcess, timeoutMs: number, signal?: AbortSignal): { lines: AsyncIterable<string>, done: Promise<string> } {
  let out = ''
  let err = ''
  const waiters: Array<() => void> = []
  child.stdout?.on('data', (b: Buffer) => { out += b.toString(); for (const w of waiters.splice(0)) w() })
  child.stderr?.on('data', (b: Buffer) => { err = (err + b.toString()).slice(-4000) })
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs)
  const onAbort = (): void => { child.kill('SIGKILL') }
  signal?.addEventListener('abort', onAbort, { once: true })
  const done = new Promise<string>((resolve, reject) => {
    child.once('error', reject)
    child.once('close', (code) => {
      clearTimeout(timer)
      signal?.removeEventListener('abort', onAbort)
      for (const w of waiters.splice(0)) w()
      if (signal?.aborted === true) { reject(signal.reason); return }
      if (code !== 0) { reject(new NsCommandError(`probe exited ${String(code)}: ${err}`)); return }
      resolve(out)
    })
  })
  done.catch(() => {})
  const lines = {
    async * [Symbol.asyncIterator] () {
      let seen = 0
      while (true) {
        const nl = out.indexOf('\n', seen)
        if (nl >= 0) { yield out.slice(seen, nl); seen = nl + 1; continue }
        if (child.exitCode !== null || child.signalCode !== null) return
        await new Promise<void>((resolve) => waiters.push(resolve))
      }
    }
  }
  return { lines, done }
}

export interface ThroughputResult { bytes: number, elapsedMs: number, bytesPerSec: number }

/**
 * Sends `bytesPerSender` over TCP from each of `from` to `to` at once (or to `via`, a forwarder in front of
 * `to`'s port) and returns what `to` received, timed from its first byte to its last.
 */
export async function measureThroughput (opts: { from: TestbedNode[], to: TestbedNode, bytesPerSender: number, port?: number, via?: { ip: string, port: number }, signal?: AbortSignal }): Promise<ThroughputResult> {
  const port = String(opts.port ?? 5201)
  const recv = nsNode(opts.to.ns, PROBE, ['recv', port, String(opts.from.length)])
  const r = collect(recv, PROBE_TIMEOUT_MS, opts.signal)
  try {
    let listening = false
    for await (const line of r.lines) { if (line === 'LISTENING') { listening = true; break } }
    if (!listening) { await r.done; throw new NsCommandError('receiver exited before listening') }
    const dest = opts.via !== undefined ? [opts.via.ip, String(opts.via.port)] : [opts.to.ip, port]
    const senders = opts.from.map((n) => collect(nsNode(n.ns, PROBE, ['send', ...dest, String(opts.bytesPerSender)]), PROBE_TIMEOUT_MS, opts.signal).done)
    await Promise.all(senders)
    const out = await r.done
    const res = JSON.parse(out.trim().split('\n').pop() ?? '{}') as { bytes: number, elapsedMs: number }
    return { ...res, bytesPerSec: res.bytes / (res.elapsedMs / 1000) }
  } finally {
    if (recv.exitCode === null && recv.signalCode === null) recv.kill('SIGKILL')
  }
}

export const DELAY_FORWARDER = join(REPO_ROOT, 'scripts', 'testbed', 'delay-forwarder.ts')

export interface NsService { child: ChildProcess, stop: () => Promise<void> }

/** Starts a node script in `ns` that prints LISTENING once ready; resolves then. */
export async function startNsListener (ns: string, script: string, args: string[], opts: { signal?: AbortSignal, timeoutMs?: number } = {}): Promise<NsService> {
  const child = nsNode(ns, script, args)
  const r = collect(child, opts.timeoutMs ?? 3_600_000, opts.signal)
  let listening = false
  for await (const line of r.lines) { if (line === 'LISTENING') { listening = true; break } }
  if (!listening) { await r.done; throw new NsCommandError(`${script} exited before listening`) }
  return {
    child,
    stop: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return
      child.kill('SIGTERM')
      await r.done.catch(() => {})
    }
  }
}

/**
 * Starts scripts/testbed/delay-forwarder.ts in `ns`: connections to `listen` (ip:port) are forwarded to `to`
 * (ip:port) with `delayMs` added in each direction (a round trip gains 2 x delayMs).
 */
export async function startDelayForwarder (opts: { ns: string, listen: string, to: string, delayMs: number, signal?: AbortSignal }): Promise<NsService> {
  return await startNsListener(opts.ns, DELAY_FORWARDER, ['--listen', opts.listen, '--to', opts.to, '--delay-ms', String(opts.delayMs)], { signal: opts.signal })
}

/** Starts a TCP echo server on port in `ns`. */
export async function startEcho (ns: string, port: number, opts: { signal?: AbortSignal } = {}): Promise<NsService> {
  return await startNsListener(ns, PROBE, ['echo', String(port)], { ...opts, timeoutMs: PROBE_TIMEOUT_MS })
}

/** Median/min/max round trip of one byte from `from` to ip:port (an echo server), over `count` trips. */
export async function measureRtt (opts: { from: TestbedNode, ip: string, port: number, count?: number, signal?: AbortSignal }): Promise<{ medianMs: number, minMs: number, maxMs: number }> {
  const child = nsNode(opts.from.ns, PROBE, ['rtt', opts.ip, String(opts.port), String(opts.count ?? 20)])
  const out = await collect(child, PROBE_TIMEOUT_MS, opts.signal).done
  return JSON.parse(out.trim().split('\n').pop() ?? '{}') as { medianMs: number, minMs: number, maxMs: number }
}
