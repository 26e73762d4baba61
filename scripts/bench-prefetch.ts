// The prefetch benchmark of issue 5: the Debian 12 boot trace replayed on a cold agent behind a warm parent
// over a shaped link, in five modes, all in one run:
//   none       prefetch off: every first touch of a block is a fetch over the link
//   firstBoot  prefetch on, no profile anywhere (the first boot of a new image: the honest cold case); each run
//              boots an image id of its own that no agent ever booted, and the run fails if a profile shows up
//   profile    prefetch on from instance creation, with the profile learned from an earlier boot (on the parent,
//              fetched by the cold agent over /vmthunder/profile/1 before the replay starts)
//   afterIdle  the replay starts once idle prefetch has pulled the whole image
//   local      the image as a local file, served by nbdkit (file plugin) over a unix socket: the same NBD client
// With --wave N (N >= 2): one boot wave, N cold agents (default config but for a short heartbeat and recording
// quiet) boot a new image at the same moment (no profile anywhere), back to back, behind the same shaped link to
// the origin (agents reach each other directly). Reported: each agent's share of local reads (swarm read-ahead),
// the slowest replay, the origin's bytes during the wave over the trace's distinct bytes, and then, once the
// instances are gone and idle prefetch has completed every agent, the origin's bytes over the image's data.
// Each mode is replayed twice on a fresh cold agent: 'fast' (reads back to back, QD1: the worst case for
// prefetch) and 'think' (each read issued at its trace time: the boot's own pace, which gives read-ahead time
// to run ahead). Reported: replay time, share of reads whose blocks were all local (the agent's count), and
// the ratio to 'local' of the same replay style. Then the latency of on-demand reads (p50, p99) on a cold
// agent with prefetch off, and with idle prefetch running.
//
// The link: the parent's upload is limited (p2p.uploadLimitBytesPerSec, --rate-mbit) and every byte between
// the agent and the parent goes through an in-process TCP forwarder that delays each direction by
// --latency-ms (this kernel has no netem). The agent knows the parent only by the forwarder's address.
//
//   npm run bench:prefetch -- [--trace FILE] [--json] [--rate-mbit 200] [--latency-ms 2] [--think-scale 1]
//                             [--extra-mib 128] [--modes none,firstBoot,profile,afterIdle,local] [--styles fast,think] [--wave 0]
// --think-scale 0 skips the think-time replays. With --json: {"modes": {MODE: {replayMs, localShare, ...}}}.

import '../src/polyfill.js'
import { parseArgs } from 'node:util'
import { join } from 'node:path'
import { readFile, writeFile } from 'node:fs/promises'
import { existsSync } from 'node:fs'
import { spawn, type ChildProcess } from 'node:child_process'
import { createServer, connect, type Server, type Socket } from 'node:net'
import { startDaemon, makeTempDir, removeDir, ROOT, type TestDaemon } from './lib/agent-process.js'
import { loadTrace, nbdConnect, distinctBytes, type TraceRead, type NbdConnection } from './lib/nbd-replay.js'
import { makeTraceImage } from './lib/trace-image.js'
import { pipeDelayed } from './lib/delay-pipe.js'

const { values: opts } = parseArgs({
  options: {
    trace: { type: 'string', default: join(ROOT, 'test', 'fixtures', 'debian12-boot.reads.csv') },
    json: { type: 'boolean', default: false },
    'rate-mbit': { type: 'string', default: '200' },
    'latency-ms': { type: 'string', default: '2' },
    'think-scale': { type: 'string', default: '1' },
    'extra-mib': { type: 'string', default: '128' },
    modes: { type: 'string', default: 'none,firstBoot,profile,afterIdle,local' },
    styles: { type: 'string', default: 'fast,think' },
    wave: { type: 'string', default: '0' },
    help: { type: 'boolean', short: 'h', default: false }
  }
})
if (opts.help) {
  process.stdout.write('usage: npm run bench:prefetch -- [--trace FILE] [--json] [--rate-mbit 200] [--latency-ms 2] [--think-scale 1] [--extra-mib 128] [--modes none,firstBoot,profile,afterIdle,local] [--styles fast,think]\n')
  process.exit(0)
}
const RATE_BYTES = Number(opts['rate-mbit']) * 125_000
const LATENCY_MS = Number(opts['latency-ms'])
const THINK_SCALE = Number(opts['think-scale'])
const EXTRA_BYTES = Number(opts['extra-mib']) * 1024 * 1024
const MODES = opts.modes.split(',') as Mode[]
const WAVE_AGENTS = Number(opts.wave)
if (!(RATE_BYTES > 0) || !(LATENCY_MS >= 0) || !(THINK_SCALE >= 0) || !(EXTRA_BYTES >= 0) || MODES.some(m => !['none', 'firstBoot', 'profile', 'afterIdle', 'local'].includes(m)) ||
  !Number.isInteger(WAVE_AGENTS) || WAVE_AGENTS < 0 || WAVE_AGENTS === 1 || WAVE_AGENTS > 16) {
  process.stderr.write('bench-prefetch: bad arguments (see --help)\n')
  process.exit(2)
}
const IMAGE_BYTES = 1024 * 1024 * 1024
const IMAGE_ID = 'debian12'
const WAIT_MS = 10 * 60_000
const LATENCY_READS = 200
const say = (text: string): void => { if (!opts.json) process.stderr.write(text) }

type Mode = 'none' | 'firstBoot' | 'profile' | 'afterIdle' | 'local'
type Style = 'fast' | 'think'

interface WaveStats {
  agents: number
  slowestMs: number
  medianMs: number
  localShares: number[]
  medianLocalShare: number
  originBytesDuringWave: number
  originWaveOverDistinct: number
  /** From the wave's start until every agent holds the whole image. */
  originBytesWholePull: number
  originWholeOverImageData: number
}

interface ReplayStats {
  replayMs: number
  localShare: number
  readP50Ms: number
  readP99Ms: number
  /** Time from instance creation to the replay's start (profile adoption, idle prefetch). */
  prepMs: number
  /** CPU the agent used during the replay (user + system, from /proc): the cost, whatever the machine's load. */
  agentCpuMs: number
  /** Bytes through the shaped link during the replay (what read-ahead guessed wrong shows up here). */
  linkBytes: number
}

// ---- the shaped link: a delaying TCP forwarder (bounded queue per direction, order kept) ----

interface Forwarder { port: number, bytes: () => number, close: () => Promise<void> }

// The agents reach the parent at this address, the forwarders' (the parent listens on 127.0.0.1): an agent's
// data channel goes to the address its libp2p connection reached, at the parent's data channel port, so a
// second forwarder on that port here carries it through the same delay (and into the byte count).
const FORWARDER_HOST = '127.0.0.2'

/** Forwards LISTEN_HOST:listenPort (0: any) to 127.0.0.1:targetPort. */
async function startForwarder (targetPort: number, delayMs: number, listenPort = 0): Promise<Forwarder> {
  let bytes = 0
  const sockets = new Set<Socket>()
  const server: Server = createServer(client => {
    const upstream = connect({ host: '127.0.0.1', port: targetPort })
    client.setNoDelay(true)
    upstream.setNoDelay(true)
    sockets.add(client)
    sockets.add(upstream)
    const close = (): void => { client.destroy(); upstream.destroy() }
    client.on('error', close)
    upstream.on('error', close)
    client.on('close', () => { sockets.delete(client) })
    upstream.on('close', () => { sockets.delete(upstream) })
    const count = (n: number): void => { bytes += n }
    pipeDelayed(client, upstream, delayMs, 8 * 1024 * 1024, count)
    pipeDelayed(upstream, client, delayMs, 8 * 1024 * 1024, count)
  })
  await new Promise<void>(resolve => server.listen(listenPort, FORWARDER_HOST, resolve))
  const port = (server.address() as { port: number }).port
  return {
    port,
    bytes: () => bytes,
    close: async () => {
      for (const s of sockets) s.destroy()
      await new Promise<void>(resolve => server.close(() => resolve()))
    }
  }
}

// ---- replay ----

function percentile (sorted: number[], p: number): number {
  if (sorted.length === 0) return 0
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]
}

/**
 * Replays reads one at a time. With think times, read i is issued (t_i - t_{i-1}) x scale after read i-1
 * completed: the guest computes between reads, and a slow read delays everything after it, as in a boot.
 */
async function replay (conn: NbdConnection, reads: readonly TraceRead[], style: Style): Promise<{ replayMs: number, latencies: number[] }> {
  const latencies: number[] = []
  const t0 = performance.now()
  let previousMs = reads[0]?.timeMs ?? 0
  for (const r of reads) {
    if (style === 'think') {
      const wait = Math.max(0, r.timeMs - previousMs) * THINK_SCALE
      previousMs = r.timeMs
      if (wait > 0) await new Promise(resolve => setTimeout(resolve, wait))
    }
    const s = performance.now()
    await conn.read(r.offset, r.length)
    latencies.push(performance.now() - s)
  }
  return { replayMs: performance.now() - t0, latencies }
}

function statsOf (replayMs: number, latencies: number[], localShare: number, prepMs: number, agentCpuMs = 0, linkBytes = 0): ReplayStats {
  const sorted = [...latencies].sort((a, b) => a - b)
  return { replayMs: Math.round(replayMs), localShare, readP50Ms: round3(percentile(sorted, 0.5)), readP99Ms: round3(percentile(sorted, 0.99)), prepMs: Math.round(prepMs), agentCpuMs, linkBytes }
}

/** CPU time (user + system) a process has used, in ms, from /proc/PID/stat (clock ticks of 10 ms). */
async function cpuMsOf (pid: number | undefined): Promise<number> {
  if (pid === undefined) return 0
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '')
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return (Number(fields[11]) + Number(fields[12])) * 10 || 0
}

const round3 = (n: number): number => Math.round(n * 1000) / 1000

async function waitFor<T> (what: string, probe: () => Promise<T | undefined>, timeoutMs = WAIT_MS): Promise<T> {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    const v = await probe()
    if (v !== undefined) return v
    await new Promise(resolve => setTimeout(resolve, 50))
  }
  throw new Error(`timed out waiting for ${what}`)
}

async function main (): Promise<number> {
  const reads = await loadTrace(opts.trace)
  const work = await makeTempDir('vmt-bench-pf')
  const daemons: TestDaemon[] = []
  let forwarder: Forwarder | undefined
  let nbdkit: ChildProcess | undefined
  try {
    say(`trace: ${reads.length} reads, ${(distinctBytes(reads) / 1048576).toFixed(1)} MiB distinct; link ${opts['rate-mbit']} Mbit/s, +${LATENCY_MS} ms each way\n`)
    const image = join(work, 'image.raw')
    await makeTraceImage(image, reads, IMAGE_BYTES, EXTRA_BYTES)

    // The warm parent: the origin holds the image; its upload is the link's rate.
    const originConfig = join(work, 'origin.json')
    await writeFile(originConfig, JSON.stringify({ p2p: { heartbeatMs: 500, uploadLimitBytesPerSec: RATE_BYTES }, prefetch: { enabled: false, recordingQuietMs: 1000 } }))
    const origin = await startDaemon({ dir: join(work, 'origin'), args: ['--listen', '/ip4/127.0.0.1/tcp/0', '--config', originConfig], timeoutMs: 60_000, allowImageDirs: [work] })
    daemons.push(origin)
    say('registering the 1 GiB image on the parent...\n')
    await origin.call('image.register', { id: IMAGE_ID, path: image })
    // firstBoot: one image id per replay style, registered before any boot, so that no agent has a profile of it.
    const firstBootImage = (style: Style): string => `${IMAGE_ID}-first-${style}`
    if (MODES.includes('firstBoot')) {
      for (const style of ['fast', 'think'] as const) await origin.call('image.register', { id: firstBootImage(style), path: image })
    }
    const WAVE_IMAGE = `${IMAGE_ID}-wave`
    if (WAVE_AGENTS > 0) await origin.call('image.register', { id: WAVE_IMAGE, path: image })
    const originStatus = await origin.call('node.status')
    const originPort = Number(/\/tcp\/(\d+)/.exec(originStatus.listenAddrs[0])![1])
    const libp2pForwarder = await startForwarder(originPort, LATENCY_MS)
    const channelPort = originStatus.p2p.dataChannels?.port as number | null | undefined
    const channelForwarder = channelPort == null ? undefined : await startForwarder(channelPort, LATENCY_MS, channelPort)
    forwarder = {
      port: libp2pForwarder.port,
      bytes: () => libp2pForwarder.bytes() + (channelForwarder?.bytes() ?? 0),
      close: async () => { await libp2pForwarder.close(); await channelForwarder?.close() }
    }
    const bootstrap = `/ip4/${FORWARDER_HOST}/tcp/${forwarder.port}/p2p/${originStatus.peerId}`

    // An earlier boot, on the parent: it learns the profile that cold agents fetch.
    if (MODES.includes('profile')) {
      await origin.call('instance.create', { name: 'earlier-boot', image: IMAGE_ID })
      const conn = await nbdConnect({ socketPath: origin.nbdSocket, exportName: IMAGE_ID })
      await replay(conn, reads, 'fast')
      await conn.close()
      await waitFor('the parent to learn the profile', async () => {
        const s = await origin.call('node.status')
        return s.images[IMAGE_ID].prefetch.profileEntries > 0 ? true : undefined
      }, 60_000)
    }

    let agentCount = 0
    // recordingQuietMs: 1 s by default here (a replay's recording ends soon after it); the wave keeps the daemon's
    // default (15 s), since an agent advertises 'booting' while it records and a loaded host can pause for a second.
    const coldAgent = async (prefetch: boolean, recordingQuietMs: number | undefined = 1000): Promise<TestDaemon> => {
      const name = `agent${agentCount++}`
      const config = join(work, `${name}.json`)
      await writeFile(config, JSON.stringify({ p2p: { heartbeatMs: 500 }, prefetch: { enabled: prefetch, ...(recordingQuietMs !== undefined ? { recordingQuietMs } : {}) } }))
      const agent = await startDaemon({
        dir: join(work, name),
        args: ['--listen', '/ip4/127.0.0.1/tcp/0', '--bootstrap', bootstrap, '--trust', originStatus.peerId, '--config', config],
        timeoutMs: 60_000
      })
      daemons.push(agent)
      return agent
    }
    const imageOf = async (d: TestDaemon, imageId = IMAGE_ID): Promise<any> => (await d.call('node.status')).images[imageId]

    const runAgentMode = async (mode: Exclude<Mode, 'local'>, style: Style): Promise<ReplayStats> => {
      const agent = await coldAgent(mode !== 'none')
      const imageId = mode === 'firstBoot' ? firstBootImage(style) : IMAGE_ID
      try {
        const t0 = performance.now()
        await agent.call('instance.create', { name: 'vm', image: imageId })
        if (mode === 'profile') {
          await waitFor('the profile to reach the agent', async () => (await imageOf(agent)).prefetch.profileEntries > 0 ? true : undefined, 60_000)
        } else if (mode === 'afterIdle') {
          await waitFor('idle prefetch to complete the image', async () => (await imageOf(agent)).heldFraction === 1 ? true : undefined)
        }
        const prepMs = performance.now() - t0
        if (mode === 'firstBoot') {
          // The honest cold case: nobody has a profile of this image when its first boot starts.
          const boots = [(await imageOf(agent, imageId)).prefetch.profileBoots, (await imageOf(origin, imageId)).prefetch.profileBoots]
          if (boots.some(b => b > 0)) throw new Error(`firstBoot: a profile of ${imageId} exists already (boots ${boots.join(', ')})`)
        }
        const conn = await nbdConnect({ socketPath: agent.nbdSocket, exportName: imageId })
        const cpu0 = await cpuMsOf(agent.process.pid)
        const link0 = forwarder!.bytes()
        const { replayMs, latencies } = await replay(conn, reads, style)
        const cpuMs = await cpuMsOf(agent.process.pid) - cpu0
        const linkBytes = forwarder!.bytes() - link0
        await conn.close()
        const p = (await imageOf(agent, imageId)).prefetch
        return statsOf(replayMs, latencies, round3(p.readsLocal / Math.max(1, p.readsLocal + p.readsFetched)), prepMs, cpuMs, linkBytes)
      } finally {
        await agent.stop()
        daemons.splice(daemons.indexOf(agent), 1)
      }
    }

    const runLocal = async (style: Style): Promise<ReplayStats> => {
      if (nbdkit === undefined) {
        const pidFile = join(work, 'nbdkit.pid')
        nbdkit = spawn('nbdkit', ['-f', '-r', '-P', pidFile, '--unix', join(work, 'nbdkit.sock'), 'file', image], { stdio: 'ignore' })
        await waitFor('nbdkit', async () => existsSync(pidFile) ? true : undefined, 30_000)
      }
      const conn = await nbdConnect({ socketPath: join(work, 'nbdkit.sock') })
      await replay(conn, reads, 'fast') // page cache warm, as a local image would be after its first use
      const { replayMs, latencies } = await replay(conn, reads, style)
      await conn.close()
      return statsOf(replayMs, latencies, 1, 0)
    }

    const styles = (opts.styles.split(',') as Style[]).filter(s => (s === 'fast' || s === 'think') && (s === 'fast' || THINK_SCALE > 0))
    const results: Record<Style, Partial<Record<Mode, ReplayStats>>> = { fast: {}, think: {} }
    for (const style of styles) {
      for (const mode of MODES) {
        say(`${style} replay, mode ${mode}...\n`)
        results[style][mode] = mode === 'local' ? await runLocal(style) : await runAgentMode(mode, style)
      }
    }

    // On-demand read latency on a cold agent: prefetch off, then with idle prefetch running. Reads of distinct
    // blocks from the end of the image (idle prefetch has not reached them), one at a time.
    say('on-demand read latency, without and with prefetch running...\n')
    const latencyRun = async (prefetch: boolean): Promise<{ p50Ms: number, p99Ms: number, reads: number, fetchedReads: number, prefetchRunning: boolean }> => {
      const agent = await coldAgent(prefetch)
      try {
        await agent.call('instance.create', { name: 'vm', image: IMAGE_ID })
        if (prefetch) await waitFor('idle prefetch to run', async () => { const s = await imageOf(agent); return s.prefetch.mode === 'idle' && s.prefetch.inFlightBatches > 0 ? true : undefined }, 60_000)
        const conn = await nbdConnect({ socketPath: agent.nbdSocket, exportName: IMAGE_ID })
        const latencies: number[] = []
        for (let i = 0; i < LATENCY_READS; i++) {
          const block = latencyBlocks[i % latencyBlocks.length]
          const s = performance.now()
          await conn.read(block * 65536, 4096)
          latencies.push(performance.now() - s)
        }
        await conn.close()
        const after = await imageOf(agent)
        latencies.sort((a, b) => a - b)
        return {
          p50Ms: round3(percentile(latencies, 0.5)),
          p99Ms: round3(percentile(latencies, 0.99)),
          reads: LATENCY_READS,
          fetchedReads: after.prefetch.readsFetched,
          prefetchRunning: prefetch && after.prefetch.mode !== 'done' && after.prefetch.bytesFetched > 0
        }
      } finally {
        await agent.stop()
        daemons.splice(daemons.indexOf(agent), 1)
      }
    }
    // Data blocks (not zero blocks, which are never fetched) that idle prefetch reaches last: the extra data runs
    // makeTraceImage puts near the end of the image (same layout formula), minus the trace's own blocks.
    const traceBlocks = new Set<number>()
    for (const r of reads) for (let b = Math.floor(r.offset / 65536); b <= Math.floor((r.offset + r.length - 1) / 65536); b++) traceBlocks.add(b)
    const blockCount = IMAGE_BYTES / 65536
    const runs = Math.floor(EXTRA_BYTES / (1024 * 1024))
    const latencyBlocks: number[] = []
    for (let i = runs - 1; i >= 0 && latencyBlocks.length < LATENCY_READS; i--) {
      const first = Math.floor((i + 0.5) * blockCount / runs)
      for (let b = Math.min(blockCount, first + 16) - 1; b >= first; b--) if (!traceBlocks.has(b)) latencyBlocks.push(b)
    }
    if (latencyBlocks.length === 0) throw new Error('no data blocks for the latency runs: use --extra-mib >= 16')
    // Shuffled deterministically, so that no read finds its block brought in by the previous one's neighbours.
    for (let i = latencyBlocks.length - 1; i > 0; i--) { const j = (i * 7919) % (i + 1); [latencyBlocks[i], latencyBlocks[j]] = [latencyBlocks[j], latencyBlocks[i]] }
    const onDemand = { withoutPrefetch: await latencyRun(false), withPrefetch: await latencyRun(true) }

    // ---- one boot wave (--wave N) ----
    const runWave = async (n: number): Promise<WaveStats> => {
      say(`boot wave: ${n} agents boot ${WAVE_IMAGE} at once (no profile anywhere)...\n`)
      const agents: TestDaemon[] = []
      for (let i = 0; i < n; i++) agents.push(await coldAgent(true, undefined))
      try {
        const bytes0 = forwarder!.bytes()
        await Promise.all(agents.map(async a => await a.call('instance.create', { name: 'vm', image: WAVE_IMAGE })))
        const conns = await Promise.all(agents.map(async a => await nbdConnect({ socketPath: a.nbdSocket, exportName: WAVE_IMAGE })))
        const replays = await Promise.all(conns.map(async c => { const r = await replay(c, reads, 'fast'); await c.close(); return r.replayMs }))
        const waveBytes = forwarder!.bytes() - bytes0
        const shares = await Promise.all(agents.map(async a => { const p = (await imageOf(a, WAVE_IMAGE)).prefetch; return round3(p.readsLocal / Math.max(1, p.readsLocal + p.readsFetched)) }))
        // The wave is over: idle prefetch (held back while any peer booted) completes every agent.
        await Promise.all(agents.map(async a => await a.call('instance.destroy', { name: 'vm' })))
        await waitFor('idle prefetch to complete every agent', async () => {
          const held = await Promise.all(agents.map(async a => (await imageOf(a, WAVE_IMAGE)).heldFraction as number))
          return held.every(h => h === 1) ? true : undefined
        })
        const totalBytes = forwarder!.bytes() - bytes0
        const sortedShares = [...shares].sort((a, b) => a - b)
        return {
          agents: n,
          slowestMs: Math.round(Math.max(...replays)),
          medianMs: Math.round([...replays].sort((a, b) => a - b)[Math.floor(n / 2)]),
          localShares: shares,
          medianLocalShare: sortedShares[Math.floor(n / 2)],
          originBytesDuringWave: waveBytes,
          originWaveOverDistinct: Math.round(waveBytes / distinctBytes(reads) * 100) / 100,
          originBytesWholePull: totalBytes,
          originWholeOverImageData: Math.round(totalBytes / dataBytes * 1000) / 1000
        }
      } finally {
        await Promise.all(agents.map(async a => { await a.stop(); daemons.splice(daemons.indexOf(a), 1) }))
      }
    }
    // The image's data (what a whole-image pull must move once): the trace's blocks and the extra runs.
    const dataBlocks = new Set(traceBlocks)
    for (let i = 0; i < runs; i++) {
      const first = Math.floor((i + 0.5) * blockCount / runs)
      for (let b = first; b < Math.min(blockCount, first + 16); b++) dataBlocks.add(b)
    }
    const dataBytes = dataBlocks.size * 65536
    const wave = WAVE_AGENTS > 0 ? await runWave(WAVE_AGENTS) : undefined

    const has = (mode: Mode): boolean => styles.some(st => results[st][mode] !== undefined)
    const ratios = (style: Style): Record<string, number | null> => {
      const base = results[style].local?.replayMs
      return Object.fromEntries(Object.entries(results[style]).map(([m, r]) => [m, base === undefined || base === 0 ? null : Math.round(r.replayMs / base * 100) / 100]))
    }
    const out = {
      trace: opts.trace,
      link: { rateMbit: Number(opts['rate-mbit']), latencyMsEachWay: LATENCY_MS, bytesThroughForwarder: forwarder.bytes() },
      thinkScale: THINK_SCALE,
      modes: results.fast,
      ratioToLocal: ratios('fast'),
      think: THINK_SCALE > 0 ? { modes: results.think, ratioToLocal: ratios('think') } : undefined,
      onDemandLatency: onDemand,
      wave,
      // Only goals whose modes ran (a run of a few modes says nothing of the others).
      goals: Object.fromEntries(Object.entries({
        afterIdleLocalShareAtLeast95: has('afterIdle') ? styles.every(st => (results[st].afterIdle?.localShare ?? 0) >= 0.95) : undefined,
        afterIdleWithin105xLocal: has('afterIdle') ? Object.fromEntries(styles.map(st => [st, (ratios(st).afterIdle ?? Infinity) <= 1.05])) : undefined,
        profileWithin12xLocal: has('profile') ? Object.fromEntries(styles.map(st => [st, (ratios(st).profile ?? Infinity) <= 1.2])) : undefined,
        firstBootFastAtMost2500Ms: results.fast.firstBoot !== undefined ? results.fast.firstBoot.replayMs <= 2500 : undefined,
        firstBootThinkWithin101xLocal: results.think.firstBoot !== undefined ? (ratios('think').firstBoot ?? Infinity) <= 1.01 : undefined,
        waveMedianLocalAtLeast80: wave !== undefined ? wave.medianLocalShare >= 0.8 : undefined,
        waveWholePullAtMost105xImageData: wave !== undefined ? wave.originWholeOverImageData <= 1.05 : undefined
      }).filter(([, v]) => v !== undefined))
    }
    if (opts.json) {
      process.stdout.write(JSON.stringify(out, null, 2) + '\n')
    } else {
      for (const style of styles) {
        process.stdout.write(`\n${style === 'fast' ? 'reads back to back (QD1)' : `reads after the trace's think times (x${THINK_SCALE})`}\n`)
        process.stdout.write('mode       replay ms   x local   local reads   read p50 ms   read p99 ms   prep ms   agent CPU ms   link MiB\n')
        const r = ratios(style)
        for (const [mode, s] of Object.entries(results[style])) {
          process.stdout.write(`${mode.padEnd(10)} ${String(s.replayMs).padStart(9)}   ${String(r[mode] ?? '-').padStart(7)}   ${(s.localShare * 100).toFixed(1).padStart(10)}%   ${s.readP50Ms.toFixed(3).padStart(11)}   ${s.readP99Ms.toFixed(3).padStart(11)}   ${String(s.prepMs).padStart(7)}   ${String(s.agentCpuMs).padStart(12)}   ${(s.linkBytes / 1048576).toFixed(1).padStart(8)}\n`)
        }
      }
      process.stdout.write(`\non-demand reads of missing blocks (${LATENCY_READS}, 4 KiB, QD1): without prefetch p50 ${onDemand.withoutPrefetch.p50Ms} ms p99 ${onDemand.withoutPrefetch.p99Ms} ms; ` +
        `with idle prefetch running p50 ${onDemand.withPrefetch.p50Ms} ms p99 ${onDemand.withPrefetch.p99Ms} ms\n`)
      if (wave !== undefined) {
        process.stdout.write(`\nboot wave, ${wave.agents} agents, back to back, no profile anywhere: slowest ${wave.slowestMs} ms, median ${wave.medianMs} ms; ` +
          `local reads per agent ${wave.localShares.map(x => `${(x * 100).toFixed(1)}%`).join(' ')} (median ${(wave.medianLocalShare * 100).toFixed(1)}%)\n` +
          `origin bytes: during the wave ${(wave.originBytesDuringWave / 1048576).toFixed(1)} MiB = ${wave.originWaveOverDistinct} x the trace's distinct bytes; ` +
          `wave + whole-image pull ${(wave.originBytesWholePull / 1048576).toFixed(1)} MiB = ${wave.originWholeOverImageData} x the image's data\n`)
      }
      process.stdout.write(`goals: ${JSON.stringify(out.goals)}\n`)
    }
    return 0
  } finally {
    await Promise.all(daemons.map(async d => await d.stop().catch(() => {})))
    await forwarder?.close()
    if (nbdkit !== undefined && nbdkit.exitCode === null) nbdkit.kill('SIGTERM')
    await removeDir(work)
  }
}

main().then(code => { process.exitCode = code }, err => {
  process.stderr.write(`bench-prefetch: ${(err as Error).stack ?? String(err)}\n`)
  process.exitCode = 1
})
