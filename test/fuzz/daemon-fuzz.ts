// Fuzzing a real vmthunderd process from outside: JSON-RPC requests (valid, malformed, batches, oversized,
// clients that vanish or never read), NBD connections with random bytes, and connect/use/close cycles of NBD
// and of instances with the daemon's open fds counted from /proc. Used with small counts by
// test/integration/daemon-fuzz.test.ts and with big ones by `npm run fuzz`.

import fc from 'fast-check'
import { createConnection, type Socket } from 'node:net'
import { readdir } from 'node:fs/promises'
import { execa } from 'execa'
import type { TestDaemon } from '../helpers/daemon.js'
import { waitFor } from '../helpers/wait.js'

export interface RpcFuzzReport {
  requests: number
  answered: number
  unanswered: number
  connections: number
  /** Answers whose error code is -32603 (internal): a method crashed on input it should have refused. */
  internalErrors: number
  daemonAlive: boolean
}

const METHODS = ['image.register', 'image.list', 'image.remove', 'instance.create', 'instance.destroy', 'instance.list', 'node.status',
  'image.profile.export', 'image.profile.import', 'nope']

function requestArb (imagePath: string): fc.Arbitrary<Record<string, unknown>> {
  const name = fc.oneof(fc.constantFrom('vm1', 'vm2', 'img', 'fz', '../x', ''), fc.string({ maxLength: 70 }))
  return fc.record({
    jsonrpc: fc.oneof({ weight: 9, arbitrary: fc.constant('2.0') }, { weight: 1, arbitrary: fc.anything() }),
    method: fc.oneof({ weight: 9, arbitrary: fc.constantFrom(...METHODS) }, { weight: 1, arbitrary: fc.string({ maxLength: 20 }) }),
    params: fc.oneof(
      fc.record({
        id: fc.oneof(name, fc.anything()),
        name,
        image: name,
        path: fc.oneof(fc.constantFrom(imagePath, '/etc/passwd', '../../../etc/passwd', '/dev/zero', '/proc/self/mem', imagePath + '.missing'), fc.string({ maxLength: 50 })),
        force: fc.boolean(),
        blockSizeBytes: fc.oneof(fc.constantFrom(4096, 65536, 1000), fc.integer()),
        profile: fc.oneof(fc.object({ maxDepth: 2 }), fc.anything())
      }, { requiredKeys: [] }),
      fc.anything({ maxDepth: 2 }))
  }, { requiredKeys: ['jsonrpc', 'method'] })
}

type Line = { kind: 'request', id: number, text: string } | { kind: 'garbage', text: string }

/**
 * Sends `requests` requests over `connections` concurrent connections and waits (bounded) for every answer.
 * A share of connections misbehave: garbage lines, an oversized line, closing without reading, or not reading.
 */
export async function rpcFuzz (daemon: TestDaemon, options: { requests: number, seed: number, connections?: number, imagePath: string, answerTimeoutMs?: number }): Promise<RpcFuzzReport> {
  const connections = options.connections ?? 8
  const arb = requestArb(options.imagePath)
  const samples = fc.sample(fc.tuple(arb, fc.integer({ min: 0, max: 99 })), { numRuns: options.requests, seed: options.seed })
  let nextId = 1
  const perConnection: Line[][] = Array.from({ length: connections }, () => [])
  samples.forEach(([request, roll], i) => {
    const lines = perConnection[i % connections]
    if (roll < 5) lines.push({ kind: 'garbage', text: roll < 2 ? '{"jsonrpc":"2.0","method":' : roll < 4 ? '\u0000\u00ff not json' : '[]' })
    else {
      const id = nextId++
      lines.push({ kind: 'request', id, text: JSON.stringify({ ...request, id }) })
    }
  })
  const report: RpcFuzzReport = { requests: 0, answered: 0, unanswered: 0, connections, internalErrors: 0, daemonAlive: true }
  const answerTimeoutMs = options.answerTimeoutMs ?? 120_000
  await Promise.all(perConnection.map(async (lines, c) => {
    // Connection roles: most behave, one vanishes without reading, one sends an oversized line at the end.
    const role = c === 1 ? 'vanish' : c === 2 ? 'oversize' : 'normal'
    const ids = new Set(lines.filter(l => l.kind === 'request').map(l => (l as { id: number }).id))
    report.requests += ids.size
    const socket = await connectWithRetry(daemon.socket)
    const answered = new Set<number>()
    let text = ''
    await new Promise<void>(resolve => {
      const timer = setTimeout(done, answerTimeoutMs)
      function done (): void { clearTimeout(timer); socket.destroy(); resolve() }
      socket.on('error', done)
      socket.on('close', done)
      socket.setEncoding('utf8')
      socket.on('data', (chunk: string) => {
        text += chunk
        let nl = text.indexOf('\n')
        while (nl !== -1) {
          const line = text.slice(0, nl)
          text = text.slice(nl + 1)
          nl = text.indexOf('\n')
          let reply: any
          try { reply = JSON.parse(line) } catch { continue }
          for (const r of Array.isArray(reply) ? reply : [reply]) {
            if (typeof r?.id === 'number' && ids.has(r.id)) answered.add(r.id)
            if (r?.error?.code === -32603) report.internalErrors++
          }
        }
        if (role !== 'oversize' && answered.size === ids.size) done()
      })
      socket.write(lines.map(l => l.text).join('\n') + '\n')
      if (role === 'vanish') { socket.destroy(); return }
      if (role === 'oversize') socket.write('x'.repeat(2 * 1024 * 1024) + '\n')
      if (ids.size === 0 && role === 'normal') done()
    })
    if (role === 'vanish') report.requests -= ids.size
    else {
      report.answered += answered.size
      report.unanswered += ids.size - answered.size
    }
  }))
  report.daemonAlive = daemon.process.exitCode === null && daemon.process.signalCode === null
  return report
}

export interface FloodReport { connections: number, answered: number, refused: number, fdsBefore: number, fdsAfter: number }

/**
 * More connections than the daemon admits, all at once, each with a request that takes a while (instance.create
 * of an image no peer has waits p2p.manifestTimeoutMs): the surplus is refused with 1091. Then every client
 * closes and the daemon's fds must come back: refused sockets used to stay open in the daemon for ever (it never
 * read their EOF), which also held its stop.
 */
export async function connectionFlood (daemon: TestDaemon, options: { connections: number }): Promise<FloodReport> {
  const pid = daemon.process.pid as number
  const fdsBefore = await openFds(pid)
  const report: FloodReport = { connections: options.connections, answered: 0, refused: 0, fdsBefore, fdsAfter: 0 }
  await Promise.all(Array.from({ length: options.connections }, async (_, i) => {
    const socket = await connectWithRetry(daemon.socket)
    const reply = await new Promise<any>(resolve => {
      let text = ''
      const timer = setTimeout(() => resolve(undefined), 120_000)
      socket.on('error', () => { clearTimeout(timer); resolve(undefined) })
      socket.on('data', (b: Buffer) => {
        text += b.toString()
        const nl = text.indexOf('\n')
        if (nl !== -1) { clearTimeout(timer); try { resolve(JSON.parse(text.slice(0, nl))) } catch { resolve(undefined) } }
      })
      socket.write(JSON.stringify({ jsonrpc: '2.0', id: i, method: 'instance.create', params: { name: `flood${i}`, image: 'nobody-has-this' } }) + '\n')
    })
    if (reply?.error?.code === 1091) report.refused++
    else if (reply !== undefined) report.answered++
    socket.destroy()
  }))
  report.fdsAfter = await settledFds(pid, fdsBefore)
  return report
}

async function connectWithRetry (path: string): Promise<Socket> {
  // The daemon may be at its connection limit (it evicts idle ones): a refused connect is retried, bounded.
  for (let attempt = 0; ; attempt++) {
    try {
      return await new Promise<Socket>((resolve, reject) => {
        const s = createConnection(path)
        s.once('connect', () => resolve(s))
        s.once('error', reject)
      })
    } catch (err) {
      if (attempt >= 20) throw err
      await new Promise(resolve => setImmediate(resolve))
    }
  }
}

export interface NbdFuzzReport {
  cases: number
  daemonAlive: boolean
  /** Bytes read through the export after the fuzz, compared with the image: must be 0 wrong. */
  wrongBytes: number
}

/** Random bytes at the daemon's NBD socket, each on its own connection, then a checked nbdcopy of the image. */
export async function nbdFuzz (daemon: TestDaemon, options: { cases: number, seed: number, imageId: string, expected: Buffer }): Promise<NbdFuzzReport> {
  const NBDMAGIC = Buffer.from('NBDMAGIC')
  const samples = fc.sample(fc.tuple(fc.uint8Array({ maxLength: 512 }), fc.boolean()), { numRuns: options.cases, seed: options.seed })
  for (const [bytes, afterGreeting] of samples) {
    await new Promise<void>(resolve => {
      const s = createConnection(daemon.nbdSocket)
      let seen = Buffer.alloc(0)
      const timer = setTimeout(finish, 5000)
      function finish (): void { clearTimeout(timer); s.destroy(); resolve() }
      s.on('error', finish)
      s.on('close', finish)
      s.on('data', (b: Buffer) => {
        seen = Buffer.concat([seen, b]).subarray(-64)
        if (afterGreeting && seen.includes(NBDMAGIC)) { s.write(Buffer.concat([Buffer.from([0, 0, 0, 3]), Buffer.from(bytes)])); s.end() }
      })
      if (!afterGreeting) { s.write(Buffer.from(bytes)); s.end() }
    })
  }
  const out = await execa('nbdcopy', [`nbd+unix:///${options.imageId}?socket=${daemon.nbdSocket}`, '-'], { encoding: 'buffer', timeout: 120_000, stripFinalNewline: false })
  const got = Buffer.from(out.stdout as Uint8Array)
  let wrong = Math.abs(got.length - options.expected.length)
  for (let i = 0; i < Math.min(got.length, options.expected.length); i++) if (got[i] !== options.expected[i]) wrong++
  return { cases: samples.length, daemonAlive: daemon.process.exitCode === null, wrongBytes: wrong }
}

/** Open fds of a process (Linux /proc). */
export async function openFds (pid: number): Promise<number> {
  return (await readdir(`/proc/${pid}/fd`)).length
}

export interface CycleReport { cycles: number, fdsBefore: number, fdsAfter: number }

/** NBD connect, read, disconnect `cycles` times (nbdinfo --size is a real client doing a full handshake). */
export async function nbdCycles (daemon: TestDaemon, options: { cycles: number, imageId: string }): Promise<CycleReport> {
  const pid = daemon.process.pid as number
  // One warm-up so lazily opened files (the cache file, pools) are counted in the baseline.
  await execa('nbdinfo', ['--size', daemon.nbdUri(options.imageId)], { timeout: 30_000 })
  const fdsBefore = await openFds(pid)
  for (let i = 0; i < options.cycles; i++) {
    await new Promise<void>((resolve, reject) => {
      const s = createConnection(daemon.nbdSocket)
      s.once('error', reject)
      s.once('data', () => { s.destroy(); resolve() })
    })
  }
  for (let i = 0; i < Math.min(options.cycles, 20); i++) await execa('nbdinfo', ['--size', daemon.nbdUri(options.imageId)], { timeout: 30_000 })
  return { cycles: options.cycles, fdsBefore, fdsAfter: await settledFds(pid, fdsBefore) }
}

/** instance.create and instance.destroy `cycles` times. */
export async function instanceCycles (daemon: TestDaemon, options: { cycles: number, imageId: string }): Promise<CycleReport> {
  const pid = daemon.process.pid as number
  await daemon.call('instance.create', { name: 'warm', image: options.imageId })
  await daemon.call('instance.destroy', { name: 'warm' })
  const fdsBefore = await openFds(pid)
  for (let i = 0; i < options.cycles; i++) {
    await daemon.call('instance.create', { name: `cyc${i % 4}`, image: options.imageId })
    await daemon.call('instance.destroy', { name: `cyc${i % 4}` })
  }
  return { cycles: options.cycles, fdsBefore, fdsAfter: await settledFds(pid, fdsBefore) }
}

/** Closed sockets leave the fd table as the daemon notices each close: wait (bounded) for the baseline, then report. */
async function settledFds (pid: number, baseline: number): Promise<number> {
  try {
    return await waitFor('open fds back at the baseline', async () => { const n = await openFds(pid); return n <= baseline ? n : undefined }, { timeoutMs: 3000 })
  } catch {
    return await openFds(pid)
  }
}
