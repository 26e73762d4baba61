// Calibration of the simulator's cost model (issue 10) from the real daemon on loopback: starts an origin
// agent holding a 1 GiB trace image and client agents that bootstrap from it, and measures with CPU time from
// /proc (user + system of each daemon process) and wall time:
//   startup      a daemon's start to its "started" line (wall, CPU)
//   attach       instance.create on a client (manifest fetch, cache, export) and the time to its first parent
//   blocks       two read patterns through a client's NBD export, fetched from the origin: 1 MiB sequential
//                reads (16 blocks per request) give the CPU per 64 KiB block (an upper bound: their request
//                costs are counted in), then the boot trace (one small request per read that misses) the CPU
//                per request beyond its blocks, at the sender (origin) and the receiver; and the wall time
//                per request beyond both CPU costs (waits inside the agents: scheduling, commits); then the
//                trace once more, every read a hit: the CPU and wall time of a VM read itself, which the other
//                two patterns' receiver costs are net of
//   adverts      in process: CPU to check one advert as a gossipsub receiver does (ed25519 signature, decode,
//                validate): a lower bound of the per-advert cost, the part that grows with the swarm
//   neighbours   a client's idle CPU per second with 1 and with `--idle-peers` more agents on the image's topic:
//                per other agent per second (its advert, gossip control, RTT probes, lease renewals), less the
//                advert: the part bounded by the agent's neighbourhood (probes, parents, children)
// Prints the table and, with --write, config/sim/costs.json (the simulator's defaults; see test/sim/costs.ts).
//
// --from-testbed RESULTS.json measures nothing: it fits the testbed's load factor, the host agents' CPU in a
// bench:testbed wave of vmthunderd over what costs.json's quiet costs give for the work each agent counted
// (reads, requests and blocks both ways, adverts received, idle time, instance.create), and with --write
// stores it as costs.json's testbedLoad: the factor the testbed scenarios (costLoad 'testbed') scale CPU by.
//
// Usage: npm run calibrate -- [--write] [--rounds 3] [--idle-peers 4] [--idle-s 8] [--trace FILE]
//        npm run calibrate -- --from-testbed OUT/results.json [--write]
// Figures are noisy on a shared machine: the script prints what it measured and on which commit.

import { execFileSync } from 'node:child_process'
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { makeTempDir, removeDir, ROOT, startDaemon, type TestDaemon } from './lib/agent-process.js'
import { loadTrace, nbdConnect, type TraceRead } from './lib/nbd-replay.js'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { multiaddr } from '@multiformats/multiaddr'
import { encodeAdvert, summarize, validateAdvert } from '../src/p2p/advert.js'
import { makeTraceImage } from './lib/trace-image.js'
import { COSTS_FILE, measuredCosts } from '../test/sim/costs.js'

const BLOCK_BYTES = 64 * 1024
const IMAGE_BYTES = 1024 ** 3
const SEQ_READ_BYTES = 1024 * 1024
const SEQ_RANGE_BYTES = 96 * 1024 * 1024
const POLL_MS = 50
const WAIT_LIMIT_MS = 60_000

class CalibrationError extends Error {
  override name = 'CalibrationError'
}

async function cpuMsOf (pid: number | undefined): Promise<number> {
  if (pid === undefined) return 0
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8')
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return (Number(f[11]) + Number(f[12])) * 10 // USER_HZ 100
}

/** Polls `check` (bounded) until it returns a value. */
async function until<T> (what: string, check: () => Promise<T | undefined>): Promise<T> {
  const t0 = performance.now()
  while (performance.now() - t0 < WAIT_LIMIT_MS) {
    const v = await check()
    if (v !== undefined) return v
    await new Promise(resolve => setTimeout(resolve, POLL_MS))
  }
  throw new CalibrationError(`${what}: not within ${WAIT_LIMIT_MS} ms`)
}

interface Started { daemon: TestDaemon, wallMs: number, cpuMs: number }

async function start (dir: string, args: string[], allowImageDirs?: string[]): Promise<Started> {
  const t0 = performance.now()
  const daemon = await startDaemon({ dir, args, timeoutMs: WAIT_LIMIT_MS, allowImageDirs })
  return { daemon, wallMs: performance.now() - t0, cpuMs: await cpuMsOf(daemon.process.pid) }
}

/** Blocks a list of reads touches that are not in `have`; adds them. */
function newBlocks (reads: ReadonlyArray<{ offset: number, length: number }>, have: Set<number>): number {
  let blocks = 0
  for (const r of reads) {
    for (let b = Math.floor(r.offset / BLOCK_BYTES); b <= Math.floor((r.offset + r.length - 1) / BLOCK_BYTES); b++) {
      if (!have.has(b)) { have.add(b); blocks++ }
    }
  }
  return blocks
}

/** Per block from the big-request pattern (upper bound), per request from the small-request one. */
function split (small: { requests: number, blocks: number }, smallCpuMs: number, big: { blocks: number }, bigCpuMs: number): { perRequest: number, perBlock: number } {
  if (big.blocks === 0 || small.requests === 0) throw new CalibrationError('a read pattern fetched nothing (blocks already cached?)')
  const perBlock = bigCpuMs / big.blocks
  return { perBlock, perRequest: Math.max(0, (smallCpuMs - small.blocks * perBlock) / small.requests) }
}

type Costs = Record<string, unknown>

async function main (): Promise<void> {
  const { values } = parseArgs({
    options: {
      write: { type: 'boolean', default: false },
      rounds: { type: 'string', default: '3' },
      'idle-peers': { type: 'string', default: '4' },
      'idle-s': { type: 'string', default: '8' },
      trace: { type: 'string', default: join(ROOT, 'test/fixtures/debian12-boot.reads.csv') },
      'from-testbed': { type: 'string' }
    }
  })
  if (values['from-testbed'] !== undefined) {
    await fitTestbedLoad(values['from-testbed'], values.write === true)
    return
  }
  const rounds = Math.max(1, Math.min(15, Math.floor(Number(values.rounds)) || 1))
  const idlePeers = Math.max(1, Math.min(16, Number(values['idle-peers'])))
  const idleMs = Math.max(2, Math.min(60, Number(values['idle-s']))) * 1000
  const trace: TraceRead[] = await loadTrace(values.trace as string)
  // One round's figures move by half on this shared machine: each is the median of the rounds' (fresh daemons each).
  const commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: ROOT }).toString().trim()
  const dirty = execFileSync('git', ['status', '--porcelain', '--', 'src'], { cwd: ROOT }).toString().trim() !== ''
  const all: Costs[] = []
  for (let round = 0; round < rounds; round++) {
    console.log(`-- round ${round + 1} of ${rounds}`)
    all.push(await measureOnce(trace, idlePeers, idleMs, `${commit}${dirty ? '+dirty' : ''}`))
  }
  const out: Costs = { ...all[0], rounds }
  for (const key of Object.keys(all[0])) {
    if (typeof all[0][key] !== 'number') continue
    const sorted = all.map(c => c[key] as number).sort((a, b) => a - b)
    out[key] = sorted[Math.floor(sorted.length / 2)]
  }
  if (rounds > 1) console.log(`median of ${rounds} rounds: ${JSON.stringify(out)}`)
  if (values.write === true) {
    const path = COSTS_FILE
    // the testbed's load factor was fitted against the old quiet costs: kept, but it wants fitting again
    const before = JSON.parse(await readFile(path, 'utf8').catch(() => '{}'))
    if (before.testbedLoad !== undefined) {
      out.testbedLoad = before.testbedLoad
      console.log('kept testbedLoad, fitted against the previous costs: fit it again (--from-testbed RESULTS.json --write)')
    }
    await writeFile(path, JSON.stringify(out, null, 2) + '\n')
    console.log(`wrote ${path}`)
  }
}

async function measureOnce (trace: TraceRead[], idlePeers: number, idleMs: number, commit: string): Promise<Costs> {
  const base = await makeTempDir('vmtcal')
  const daemons: TestDaemon[] = []
  try {
    const image = join(base, 'guest.raw')
    await makeTraceImage(image, trace, IMAGE_BYTES)
    const config = join(base, 'config.json')
    await writeFile(config, JSON.stringify({ prefetch: { enabled: false } }) + '\n')
    const common = ['--config', config, '--listen', '/ip4/127.0.0.1/tcp/0']

    const origin = await start(join(base, 'origin'), common, [base])
    daemons.push(origin.daemon)
    await origin.daemon.call('image.register', { id: 'guest', path: image })
    const os = await origin.daemon.call('node.status')
    const addr = (os.listenAddrs as string[]).find(a => a.includes('/127.0.0.1/'))
    if (addr === undefined) throw new CalibrationError('origin has no loopback address')
    const bootstrap = addr.includes('/p2p/') ? addr : `${addr}/p2p/${os.peerId as string}`
    const clientArgs = [...common, '--bootstrap', bootstrap, '--trust', os.publicKey as string]

    const client = await start(join(base, 'client'), clientArgs)
    daemons.push(client.daemon)
    await until('client connects', async () => Number((await client.daemon.call('node.status')).p2p?.peers ?? 0) >= 1 ? true : undefined)

    // attach: instance.create, then the first parent
    const t0 = performance.now()
    const cpuBeforeCreate = await cpuMsOf(client.daemon.process.pid)
    await client.daemon.call('instance.create', { name: 'vm1', image: 'guest' })
    const createMs = performance.now() - t0
    const createCpuMs = await cpuMsOf(client.daemon.process.pid) - cpuBeforeCreate
    await until('client attaches', async () => {
      const st = await client.daemon.call('node.status')
      return st.images?.guest?.depth !== null && st.images?.guest?.depth !== undefined ? true : undefined
    })
    const attachMs = performance.now() - t0

    // blocks: pattern 1, the boot trace back to back; pattern 2, 1 MiB sequential reads of fresh blocks
    const have = new Set<number>()
    const measure = async (reads: ReadonlyArray<{ offset: number, length: number }>): Promise<{ blocks: number, requests: number, senderMs: number, receiverMs: number, wallMs: number }> => {
      const blocks = newBlocks(reads, have)
      // the requests the client really sent (its peer source splits and groups reads its own way)
      const requestsSent = async (): Promise<number> => Number((await client.daemon.call('node.status')).p2p?.blockRequests?.requests ?? NaN)
      const q0 = await requestsSent()
      const conn = await nbdConnect({ socketPath: client.daemon.nbdSocket, exportName: 'guest' })
      const s0 = await cpuMsOf(origin.daemon.process.pid); const r0 = await cpuMsOf(client.daemon.process.pid)
      const w0 = performance.now()
      for (const r of reads) await conn.read(r.offset, r.length)
      const wallMs = performance.now() - w0
      const senderMs = await cpuMsOf(origin.daemon.process.pid) - s0
      const receiverMs = await cpuMsOf(client.daemon.process.pid) - r0
      await conn.close()
      const requests = await requestsSent() - q0
      if (!Number.isFinite(requests)) throw new CalibrationError('node.status has no p2p.blockRequests.requests counter')
      return { blocks, requests, senderMs, receiverMs, wallMs }
    }
    const p1 = await measure(trace)
    const seq: Array<{ offset: number, length: number }> = []
    for (let off = IMAGE_BYTES / 2; off < IMAGE_BYTES / 2 + SEQ_RANGE_BYTES; off += SEQ_READ_BYTES) seq.push({ offset: off, length: SEQ_READ_BYTES })
    const p2 = await measure(seq)
    // pattern 3, the boot trace again: every read a hit, so what remains is the cost of a read itself
    const p3 = await measure(trace)
    if (p3.blocks !== 0) throw new CalibrationError('the second pass of the trace fetched blocks')
    const readCpuMs = p3.receiverMs / trace.length
    const readWallMs = p3.wallMs / trace.length
    const send = split(p1, p1.senderMs, p2, p2.senderMs)
    // the receiver's request and block costs are what its reads do beyond the read itself
    const recv = split(p1, p1.receiverMs - trace.length * readCpuMs, p2, p2.receiverMs - seq.length * readCpuMs)
    // one read at a time: the wall time of a request is both CPU costs plus waits that are not CPU
    const requestWallMs = Math.max(0, p1.wallMs / p1.requests - (p1.senderMs + p1.receiverMs) / p1.requests)

    // adverts: the client's idle CPU per second, alone with the origin, then with idlePeers more agents
    const idleCpuPerS = async (): Promise<number> => {
      const c0 = await cpuMsOf(client.daemon.process.pid)
      await new Promise(resolve => setTimeout(resolve, idleMs))
      return (await cpuMsOf(client.daemon.process.pid) - c0) / (idleMs / 1000)
    }
    const idle1 = await idleCpuPerS()
    for (let i = 0; i < idlePeers; i++) {
      const extra = await start(join(base, `peer${i}`), clientArgs)
      daemons.push(extra.daemon)
      await extra.daemon.call('instance.create', { name: `vm-p${i}`, image: 'guest' })
    }
    // on the topic is what counts here; attached (a parent) is the usual state, but not required
    await until('peers attach', async () => {
      const st = await Promise.all(daemons.slice(2).map(async d => await d.call('node.status')))
      return st.every(s => s.images?.guest?.depth !== null && s.images?.guest?.depth !== undefined) ? true : undefined
    }).catch((err: Error) => { console.error(`warning: ${err.message}; measuring anyway`) })
    const idleN = await idleCpuPerS()
    // every agent advertises once per heartbeat (1 s) when nothing changes: idlePeers more adverts per second
    const perPeerCpuMs = Math.max(0, (idleN - idle1) / idlePeers)
    const advertCpuMs = await advertCheckCpuMs(2000)

    const out = {
      measuredAt: new Date().toISOString().slice(0, 16) + 'Z',
      commit,
      startupWallMs: Math.round(client.wallMs),
      startupCpuMs: Math.round(client.cpuMs),
      attachMs: Math.round(attachMs),
      instanceCreateMs: Math.round(createMs),
      instanceCreateCpuMs: Math.round(createCpuMs),
      requestSendCpuMs: round3(Math.max(0, send.perRequest)),
      blockSendCpuMs: round3(Math.max(0, send.perBlock)),
      requestRecvCpuMs: round3(Math.max(0, recv.perRequest)),
      blockRecvCpuMs: round3(Math.max(0, recv.perBlock)),
      requestWaitMs: round3(requestWallMs),
      advertCpuMs: round3(advertCpuMs),
      neighbourCpuMsPerS: round3(Math.max(0, perPeerCpuMs - advertCpuMs)),
      idleCpuMsPerS: round3(idle1),
      readCpuMs: round3(readCpuMs),
      readWallMs: round3(readWallMs)
    }
    console.log(`calibration on ${out.commit}, ${out.measuredAt} (CPU from /proc, 10 ms ticks; shared machine: noisy)`)
    console.log(`start-up           wall ${fmt(client.wallMs)} ms   cpu ${fmt(client.cpuMs)} ms   (origin: wall ${fmt(origin.wallMs)}, cpu ${fmt(origin.cpuMs)})`)
    console.log(`attach             instance.create ${fmt(createMs)} ms (cpu ${fmt(createCpuMs)} ms), first parent after ${fmt(attachMs)} ms`)
    for (const [name, p] of [['boot trace', p1], ['1 MiB sequential', p2], ['trace again, hits', p3]] as const) {
      console.log(`${name.padEnd(18)} ${p.requests} requests, ${p.blocks} blocks in ${fmt(p.wallMs)} ms wall: sender cpu ${fmt(p.senderMs)} ms, receiver cpu ${fmt(p.receiverMs)} ms`)
    }
    console.log(`per read           ${out.readCpuMs} ms cpu at the agent, ${out.readWallMs} ms wall (served from its cache)`)
    console.log(`per request        sender ${out.requestSendCpuMs} ms cpu, receiver ${out.requestRecvCpuMs} ms cpu`)
    console.log(`per 64 KiB block   sender ${out.blockSendCpuMs} ms cpu, receiver ${out.blockRecvCpuMs} ms cpu`)
    console.log(`wall per request   ${(p1.wallMs / p1.requests).toFixed(2)} ms (trace, one read at a time): ${out.requestWaitMs} ms of it not CPU`)
    console.log(`adverts            ${out.advertCpuMs} ms cpu to verify and validate one (in process; gossipsub framing not counted)`)
    console.log(`neighbours         idle ${fmt(idle1)} ms cpu/s with 1 peer, ${fmt(idleN)} with ${idlePeers + 1}: ${round3(perPeerCpuMs)} ms cpu/s per peer, ${out.neighbourCpuMsPerS} beyond its advert`)
    return out
  } finally {
    await Promise.all(daemons.map(async d => { await d.stop() }))
    await removeDir(base)
  }
}

/** What a bench:testbed results.json says of one host agent (the fields this fit reads). */
interface TestbedAgent {
  host: string
  cpuMs: number
  bytesFromOrigin: number
  bytesFromPeers: number
  bytesSent: number
  advertsPublished?: number
  readsLocal?: number
  readsFetched?: number
  blockRequests?: { requests: number }
}

/**
 * The testbed's load factor: the wave's host agents' CPU (GO until the last host was done) over the CPU the
 * quiet costs give for the work each one counted. Requests a host answered are not counted per host: they are
 * its blocks sent at the wave's mean blocks per request.
 */
async function fitTestbedLoad (resultsPath: string, write: boolean): Promise<void> {
  const results = JSON.parse(await readFile(resultsPath, 'utf8'))
  const run = results.systems?.vmthunderd
  const agents = run?.agents as TestbedAgent[] | undefined
  if (agents === undefined || agents.length === 0 || typeof run.maxMs !== 'number') throw new CalibrationError(`${resultsPath}: no vmthunderd run with agents`)
  if (results.think === true) throw new CalibrationError(`${resultsPath}: a think-time run; fit on a back-to-back wave`)
  // the simulator's reader: every cost field checked (a costs.json from before a field existed fails here, clearly)
  const costs = measuredCosts()
  const blocks = (bytes: number): number => bytes / BLOCK_BYTES
  const requestsMade = agents.reduce((s, a) => s + (a.blockRequests?.requests ?? 0), 0)
  const blocksIn = agents.reduce((s, a) => s + blocks(a.bytesFromOrigin + a.bytesFromPeers), 0)
  const requestsPerBlock = blocksIn === 0 ? 0 : requestsMade / blocksIn
  const advertsAll = agents.reduce((s, a) => s + (a.advertsPublished ?? 0), 0)
  const waveS = run.maxMs / 1000
  console.log(`host  measured CPU-s  quiet model CPU-s  ratio   (wave ${waveS.toFixed(2)} s, ${resultsPath}, code ${String(results.code)})`)
  let measuredSum = 0; let modelSum = 0
  for (const a of agents) {
    const reads = (a.readsLocal ?? 0) + (a.readsFetched ?? 0)
    const model = reads * costs.readCpuMs +
      (a.blockRequests?.requests ?? 0) * costs.requestRecvCpuMs + blocks(a.bytesFromOrigin + a.bytesFromPeers) * costs.blockRecvCpuMs +
      blocks(a.bytesSent) * requestsPerBlock * costs.requestSendCpuMs + blocks(a.bytesSent) * costs.blockSendCpuMs +
      (advertsAll - (a.advertsPublished ?? 0)) * costs.advertCpuMs + waveS * costs.idleCpuMsPerS + costs.instanceCreateCpuMs
    measuredSum += a.cpuMs; modelSum += model
    console.log(`${a.host.padEnd(5)} ${(a.cpuMs / 1000).toFixed(2).padStart(14)} ${(model / 1000).toFixed(2).padStart(18)} ${(a.cpuMs / model).toFixed(2).padStart(6)}`)
  }
  if (modelSum <= 0) throw new CalibrationError('the quiet costs give no CPU for this wave (costs.json all zero?)')
  const factor = Math.round(measuredSum / modelSum * 100) / 100
  console.log(`load factor ${factor} (all hosts' measured CPU over the model's; quiet costs of ${String(costs.commit)} at ${String(costs.measuredAt)})`)
  // What else ran on the same cores in the wave (the replay drivers, the kernel's network path), per VM read: the
  // simulator books it with each read, on the reading host's core (a driver's read and the agent's answer to it
  // take turns: it is on the read's path).
  const readsAll = agents.reduce((s, a) => s + (a.readsLocal ?? 0) + (a.readsFetched ?? 0), 0)
  const machineCpuMs = run.machineCpuMs as number | undefined
  const backgroundCpuMsPerRead = machineCpuMs === undefined || readsAll === 0
    ? undefined
    : round3(Math.max(0, machineCpuMs - measuredSum - (run.originCpuMs ?? 0)) / readsAll)
  if (backgroundCpuMsPerRead === undefined) console.log('no machineCpuMs in the run (a bench:testbed from before it was measured): no background CPU per read')
  else console.log(`background CPU per VM read ${backgroundCpuMsPerRead} ms (the machine's ${(machineCpuMs as number / 1000).toFixed(2)} CPU-s GO to done, less the agents' ${(measuredSum / 1000).toFixed(2)} and the origin's ${((run.originCpuMs ?? 0) / 1000).toFixed(2)}, over ${readsAll} reads)`)
  if (write) {
    const source = `bench:testbed ${String(results.hosts)} hosts at ${String(results.rate)}, code ${String(results.code)}, wave ${waveS.toFixed(2)} s (${resultsPath.split('/').slice(-2).join('/')})`
    await writeFile(COSTS_FILE, JSON.stringify({ ...costs, testbedLoad: { factor, ...(backgroundCpuMsPerRead !== undefined ? { backgroundCpuMsPerRead } : {}), source } }, null, 2) + '\n')
    console.log(`wrote testbedLoad to ${COSTS_FILE}`)
  }
}

/** CPU ms to verify and validate one advert, as a receiver does (mean of `count`). */
export async function advertCheckCpuMs (count: number): Promise<number> {
  const key = await generateKeyPair('Ed25519')
  const totalBlocks = IMAGE_BYTES / BLOCK_BYTES
  const bitmap = new Uint8Array(totalBlocks / 8)
  bitmap.fill(0xff, 0, 100) // 800 blocks held
  const bytes = encodeAdvert({
    imageId: 'guest', rootHex: 'ab'.repeat(32), seq: 1, depth: 2, heldBlocks: 800, totalBlocks, childCount: 3, childLimit: 8, uploadLoad: 0.2,
    manifestAvailable: true, summary: summarize(bitmap, totalBlocks), addrs: [multiaddr('/ip4/127.0.0.1/tcp/7400').bytes]
  })
  const signature = await key.sign(bytes)
  const c0 = process.cpuUsage()
  for (let i = 0; i < count; i++) {
    if (!await key.publicKey.verify(bytes, signature)) throw new CalibrationError('advert signature did not verify')
    const verdict = validateAdvert(bytes, { topicImageId: 'guest', lastSeq: 0 })
    if (!verdict.ok) throw new CalibrationError(`advert did not validate: ${verdict.reason}`)
  }
  const c = process.cpuUsage(c0)
  return (c.user + c.system) / 1000 / count
}

function round3 (x: number): number { return Math.round(x * 1000) / 1000 }
function fmt (x: number): string { return x.toFixed(0) }

if (process.argv[1] !== undefined && process.argv[1].endsWith('calibrate.ts')) main().catch((err: unknown) => {
  const e = err as Error
  console.error(`${e.name}: ${e.message}`)
  process.exitCode = 1
})
