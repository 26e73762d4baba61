// Shared by the prefetch integration tests: a condition wait on real daemons (bounded, polled), the CLI, the
// boot trace, and a small cluster (an origin and agents on loopback).

import { join } from 'node:path'
import { writeFile } from 'node:fs/promises'
import { execa } from 'execa'
import { startDaemon, CTL_BIN, type TestDaemon } from '../helpers/daemon.js'
import { loadTrace, type TraceRead } from '../../scripts/lib/nbd-replay.js'
import { ROOT } from '../../scripts/lib/agent-process.js'

export const MiB = 1024 * 1024
export const TRACE = join(ROOT, 'test', 'fixtures', 'debian12-boot.reads.csv')
/** Recordings end after this much quiet in these tests (the default is 15 s). */
export const TEST_QUIET_MS = 400
/** A daemon starts in about 1.4 CPU-seconds; on a loaded shared machine that can take far longer in wall time. */
const START_TIMEOUT_MS = 90_000

/**
 * Polls `probe` until it returns a value other than undefined; fails after `timeoutMs` with the last error and
 * the last state the probe noted (`note(state)`), so that a timeout on a loaded machine says where it stood.
 */
export async function waitUntil<T> (what: string, probe: (note: (state: unknown) => void) => Promise<T | undefined>, timeoutMs = 60_000, pollMs = 50): Promise<T> {
  const deadline = Date.now() + timeoutMs
  let last: unknown
  let noted: unknown
  const note = (state: unknown): void => { noted = state }
  while (Date.now() < deadline) {
    try {
      const value = await probe(note)
      if (value !== undefined) return value
    } catch (err) {
      last = err
    }
    await new Promise(resolve => setTimeout(resolve, pollMs))
  }
  const state = noted === undefined ? '' : ` (last state: ${JSON.stringify(noted).slice(0, 2000)})`
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last !== undefined ? ` (last error: ${(last as Error).message})` : ''}${state}`)
}

export async function ctl (daemon: TestDaemon, args: string[]): Promise<{ exitCode: number, stdout: string, stderr: string }> {
  const r = await execa(process.execPath, [CTL_BIN, '--socket', daemon.socket, ...args], { reject: false, timeout: 60_000 })
  return { exitCode: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr) }
}

export async function traceReads (): Promise<TraceRead[]> {
  return await loadTrace(TRACE)
}

/** Blocks in the order the reads first touch them. */
export function firstTouchOrder (reads: readonly TraceRead[], blockSizeBytes: number): number[] {
  const seen = new Set<number>()
  const order: number[] = []
  for (const r of reads) {
    for (let b = Math.floor(r.offset / blockSizeBytes); b <= Math.floor((r.offset + r.length - 1) / blockSizeBytes); b++) {
      if (!seen.has(b)) { seen.add(b); order.push(b) }
    }
  }
  return order
}

/** Adds the tests' short recording quiet time to a daemon config. */
export function withQuiet (config: Record<string, unknown>): Record<string, unknown> {
  const prefetch = (config.prefetch ?? {}) as Record<string, unknown>
  return { ...config, prefetch: { recordingQuietMs: TEST_QUIET_MS, ...prefetch } }
}

export async function writeConfig (dir: string, name: string, config: Record<string, unknown>): Promise<string> {
  const path = join(dir, `${name}.json`)
  await writeFile(path, JSON.stringify(config))
  return path
}

/** A temp dir with an image of `sizeBytes` of data in it (img.raw). */
export async function tempImage (prefix: string, sizeBytes: number): Promise<{ dir: string, image: string }> {
  const { makeTempDir } = await import('../helpers/daemon.js')
  const { makeImage } = await import('../helpers/images.js')
  const dir = await makeTempDir(prefix)
  const image = join(dir, 'img.raw')
  await makeImage(image, sizeBytes, [[0, sizeBytes]])
  return { dir, image }
}

/** An origin daemon (p2p on loopback) and the arguments an agent needs to join it. */
export async function startOrigin (dir: string, config: Record<string, unknown>): Promise<{ origin: TestDaemon, joinArgs: string[] }> {
  const configPath = await writeConfig(dir, 'origin', withQuiet(config))
  const origin = await startDaemon({ dir: join(dir, 'origin'), args: ['--listen', '/ip4/127.0.0.1/tcp/0', '--config', configPath], allowImageDirs: [dir], timeoutMs: START_TIMEOUT_MS })
  const status = await origin.call('node.status')
  return { origin, joinArgs: ['--listen', '/ip4/127.0.0.1/tcp/0', '--bootstrap', status.listenAddrs[0], '--trust', status.peerId] }
}

export async function startAgent (dir: string, name: string, joinArgs: string[], config: Record<string, unknown>): Promise<TestDaemon> {
  const configPath = await writeConfig(dir, name, withQuiet(config))
  return await startDaemon({ dir: join(dir, name), args: [...joinArgs, '--config', configPath], timeoutMs: START_TIMEOUT_MS })
}

export async function imageStatus (daemon: TestDaemon, imageId: string): Promise<any> {
  return (await daemon.call('node.status')).images[imageId]
}

/** A deterministic made-up boot: `count` reads of 4..64 KiB at scattered offsets of an image of `sizeBytes`. */
export function syntheticBoot (seed: number, count: number, sizeBytes: number): TraceRead[] {
  let x = seed >>> 0 || 1
  const next = (): number => { x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0; return x / 0x100000000 }
  const reads: TraceRead[] = []
  for (let i = 0; i < count; i++) {
    const length = 4096 * (1 + Math.floor(next() * 16))
    const offset = Math.floor(next() * (sizeBytes - length) / 4096) * 4096
    reads.push({ timeMs: i, offset, length })
  }
  return reads
}

/** Replays reads one at a time through a fresh NBD connection to the daemon's export. */
export async function replay (daemon: TestDaemon, imageId: string, reads: readonly TraceRead[]): Promise<void> {
  const { nbdConnect } = await import('../../scripts/lib/nbd-replay.js')
  const conn = await nbdConnect({ socketPath: daemon.nbdSocket, exportName: imageId })
  try {
    for (const r of reads) await conn.read(r.offset, r.length)
  } finally {
    await conn.close()
  }
}
