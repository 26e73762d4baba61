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
// Given twice or more (a first boot and a --vmt-profile wave of the same hour), it fits two factors: one for
// the per-request costs, one for the rest (fitTestbedLoad).
//
// Usage: npm run calibrate -- [--write] [--rounds 3] [--idle-peers 4] [--idle-s 8] [--trace FILE]
//        npm run calibrate -- --from-testbed OUT/results.json [--from-testbed OUT2/results.json ...] [--write]
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
import { COSTS_FILE, measuredCosts, NEIGHBOURS_MAX, type TestbedLoad } from '../test/sim/costs.js'

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
      'from-testbed': { type: 'string', multiple: true }
    }
  })
  if (values['from-testbed'] !== undefined && values['from-testbed'].length > 0) {
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

/** One bench:testbed wave, priced with the quiet costs: the host agents' CPU, and the model's split of it. */
interface PricedWave {
  path: string
  label: string
  rate: string
  measuredMs: number
  /** The quiet costs of the requests made and answered (requestRecvCpuMs, requestSendCpuMs). */
  requestMs: number
  /**
   * The quiet costs of the rest: the work counted per read, block, advert and instance.create, and per second of
   * the wave each agent's idle work and its neighbours' (probes, leases, gossip).
   */
  restMs: number
  reads: number
  /** The machine's busy CPU less the agents' and the origin's (undefined for a run from before it was measured). */
  backgroundMs: number | undefined
}

/**
 * Prices one wave: each host agent's counted work at the quiet costs, split into requests and the rest.
 * Requests a host answered are not counted per host: they are its blocks sent at the wave's mean blocks per
 * request.
 */
async function priceWave (resultsPath: string): Promise<PricedWave> {
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
  const label = `${String(results.rate)}${results.vmtProfile === true ? ' --vmt-profile' : ''}, code ${String(results.code)}, wave ${waveS.toFixed(2)} s, ${requestsMade} requests`
  console.log(`${resultsPath} (${label})`)
  console.log('host  measured CPU-s  quiet model CPU-s (requests + rest + per s)  ratio')
  let measuredMs = 0; let requestMs = 0; let restMs = 0; let reads = 0
  // as the simulator books it: idle work plus each other agent of the wave (the origin too) as a neighbour
  const perSecondMs = costs.idleCpuMsPerS + Math.min(agents.length, NEIGHBOURS_MAX) * costs.neighbourCpuMsPerS
  for (const a of agents) {
    const hostReads = (a.readsLocal ?? 0) + (a.readsFetched ?? 0)
    const req = (a.blockRequests?.requests ?? 0) * costs.requestRecvCpuMs + blocks(a.bytesSent) * requestsPerBlock * costs.requestSendCpuMs
    const rest = hostReads * costs.readCpuMs + blocks(a.bytesFromOrigin + a.bytesFromPeers) * costs.blockRecvCpuMs + blocks(a.bytesSent) * costs.blockSendCpuMs +
      (advertsAll - (a.advertsPublished ?? 0)) * costs.advertCpuMs + costs.instanceCreateCpuMs
    const second = waveS * perSecondMs
    measuredMs += a.cpuMs; requestMs += req; restMs += rest + second; reads += hostReads
    const all = req + rest + second
    const model = `${(all / 1000).toFixed(2)} (${(req / 1000).toFixed(2)} + ${(rest / 1000).toFixed(2)} + ${(second / 1000).toFixed(2)})`
    console.log(`${a.host.padEnd(5)} ${(a.cpuMs / 1000).toFixed(2).padStart(14)} ${model.padStart(40)} ${(a.cpuMs / all).toFixed(2).padStart(6)}`)
  }
  const machineCpuMs = run.machineCpuMs as number | undefined
  const backgroundMs = machineCpuMs === undefined ? undefined : Math.max(0, machineCpuMs - measuredMs - (run.originCpuMs ?? 0))
  return { path: resultsPath, label, rate: String(results.rate), measuredMs, requestMs, restMs, reads, backgroundMs }
}

/**
 * The testbed's load: the host agents' CPU in bench:testbed waves over what the quiet costs give for the work
 * they counted.
 *
 * One wave gives one factor for every CPU cost. Two or more waves that differ in their mix of requests and
 * blocks (a first boot: ~3,700 requests; a wave whose image was booted before, --vmt-profile: ~650 for the same
 * blocks) give two: `requestFactor` for the per-request costs and `factor` for the rest, by least squares over
 * the waves' sums (measured = requestFactor x requests' quiet CPU + factor x the rest's). Why two: calibrate
 * prices a request one read at a time on a quiet pair of agents, where each request also wakes both from idle;
 * in a saturated wave nobody sleeps, so a request costs less there than that, and a block more.
 */
function fitLoad (waves: PricedWave[]): TestbedLoad {
  const costs = measuredCosts()
  // One wave: one factor. Two or more: requests and the rest apart. Not a third term per second of the wave:
  // tried on 1 Gb/s and 100 Mb/s pairs (2026-11-30), it came out negative for the blocks and 8x for the seconds.
  // In a wave that keeps both cores busy every process's CPU grows with the wave's length; that is the
  // saturation, not a cost to model. Fit on waves of one rate (1 Gb/s); the others check it.
  const terms: Array<(w: PricedWave) => number> = waves.length === 1
    ? [w => w.requestMs + w.restMs]
    : [w => w.requestMs, w => w.restMs]
  const k = leastSquares(waves.map(w => terms.map(t => t(w))), waves.map(w => w.measuredMs))
  if (k === undefined) throw new CalibrationError('the waves have about the same share of requests in their work: pair a first boot with a --vmt-profile wave')
  if (!k.every(x => x > 0)) throw new CalibrationError(`no positive split (${k.map(x => x.toFixed(2)).join(', ')}): the waves disagree more than their mix differs; run interleaved pairs in one hour`)
  const factors = k.map(round2)
  const factor = factors.length === 1 ? factors[0] : factors[1]
  const requestFactor = factors.length > 1 ? factors[0] : undefined
  console.log('\nwave                                                        measured CPU-s  fitted CPU-s  error')
  for (const w of waves) {
    const fitted = (requestFactor ?? factor) * w.requestMs + factor * w.restMs
    console.log(`${w.label.padEnd(59)} ${(w.measuredMs / 1000).toFixed(2).padStart(14)} ${(fitted / 1000).toFixed(2).padStart(13)} ${((fitted - w.measuredMs) / w.measuredMs * 100).toFixed(1).padStart(5)} %`)
  }
  const quiet = `quiet costs of ${String(costs.commit)} at ${String(costs.measuredAt)}`
  if (requestFactor === undefined) console.log(`load factor ${factor} (all hosts' measured CPU over the model's; ${quiet})`)
  else console.log(`load factors: requests x${requestFactor} (${round3(costs.requestSendCpuMs * requestFactor)} / ${round3(costs.requestRecvCpuMs * requestFactor)} ms at sender / receiver), the rest x${factor}; ${quiet}`)
  // What else ran on the same cores in the wave (the replay drivers, the kernel's network path), per VM read: the
  // simulator books it with each read, on the reading host's core (a driver's read and the agent's answer to it
  // take turns: it is on the read's path). Over all the waves that measured it.
  const measuredBg = waves.filter(w => w.backgroundMs !== undefined)
  const readsAll = measuredBg.reduce((s, w) => s + w.reads, 0)
  const backgroundCpuMsPerRead = measuredBg.length === 0 || readsAll === 0
    ? undefined
    : round3(measuredBg.reduce((s, w) => s + (w.backgroundMs as number), 0) / readsAll)
  if (backgroundCpuMsPerRead === undefined) console.log('no machineCpuMs in the runs (bench:testbed from before it was measured): no background CPU per read')
  else console.log(`background CPU per VM read ${backgroundCpuMsPerRead} ms (the machine's busy CPU GO to done, less the agents' and the origin's, over ${readsAll} reads in ${measuredBg.length} wave(s))`)
  const source = waves.map(w => `bench:testbed 8 hosts at ${w.label} (${w.path.split('/').slice(-2).join('/')})`).join('; ')
  return { factor, ...(requestFactor !== undefined ? { requestFactor } : {}), ...(backgroundCpuMsPerRead !== undefined ? { backgroundCpuMsPerRead } : {}), source }
}

/**
 * Fits the load of each link rate's waves apart (the same work costs more CPU at 100 Mb/s than at 1 Gb/s: on
 * 2026-11-30 the agents 1.6x, nbdkit's whole wave 2.2x; a slower link hands each process its bytes in more,
 * smaller pieces). The first rate given is costs.json's testbedLoad; with more than one, each is under
 * testbedLoad.byRate too, and a scenario's `testbedRate` picks its own.
 */
async function fitTestbedLoad (resultsPaths: string[], write: boolean): Promise<void> {
  const byRate = new Map<string, PricedWave[]>()
  for (const path of resultsPaths) {
    const w = await priceWave(path)
    byRate.set(w.rate, [...byRate.get(w.rate) ?? [], w])
  }
  const loads = new Map<string, TestbedLoad>()
  for (const [rate, waves] of byRate) {
    console.log(`\n== ${rate}: ${waves.length} wave(s)`)
    loads.set(rate, fitLoad(waves))
  }
  const [first] = loads.values()
  const load: TestbedLoad = loads.size === 1 ? first : { ...first, byRate: Object.fromEntries(loads) }
  if (write) {
    await writeFile(COSTS_FILE, JSON.stringify({ ...measuredCosts(), testbedLoad: load }, null, 2) + '\n')
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

/**
 * Least squares: the x minimising |A x - b| (rows of A: one per wave), by the normal equations and Gaussian
 * elimination with partial pivoting; undefined when the columns are (nearly) dependent.
 */
export function leastSquares (a: number[][], b: number[]): number[] | undefined {
  const n = a[0].length
  if (a.length < n) return undefined
  const m = Array.from({ length: n }, (_, i) => [...Array.from({ length: n }, (_, j) => a.reduce((s, row) => s + row[i] * row[j], 0)), a.reduce((s, row, r) => s + row[i] * b[r], 0)])
  const scale = m.map((row, i) => Math.sqrt(row[i]))
  if (scale.some(x => !(x > 0))) return undefined
  // scaled to unit diagonal, so that "nearly dependent" does not depend on the terms' units
  for (let i = 0; i < n; i++) for (let j = 0; j <= n; j++) m[i][j] /= scale[i] * (j < n ? scale[j] : 1)
  for (let c = 0; c < n; c++) {
    let p = c
    for (let r = c + 1; r < n; r++) if (Math.abs(m[r][c]) > Math.abs(m[p][c])) p = r
    if (Math.abs(m[p][c]) < 1e-6) return undefined
    ;[m[c], m[p]] = [m[p], m[c]]
    for (let r = 0; r < n; r++) {
      if (r === c) continue
      const f = m[r][c] / m[c][c]
      for (let j = c; j <= n; j++) m[r][j] -= f * m[c][j]
    }
  }
  return m.map((row, i) => row[n] / row[i] / scale[i])
}

function round3 (x: number): number { return Math.round(x * 1000) / 1000 }
function round2 (x: number): number { return Math.round(x * 100) / 100 }
function fmt (x: number): string { return x.toFixed(0) }

if (process.argv[1] !== undefined && process.argv[1].endsWith('calibrate.ts')) main().catch((err: unknown) => {
  const e = err as Error
  console.error(`${e.name}: ${e.message}`)
  process.exitCode = 1
})
