// Resource bounds under load: 64 NBD clients doing random reads across 4 agents (an origin and three peers of
// it, each warmed up by one whole read) for a bounded time, sampling each agent's RSS, open fds and CPU-seconds from /proc; then 1,000 NBD
// connect/disconnect cycles, with fds and RSS before and after. Every read is checked against the image.
//
// npm run soak-nbd -- [--seconds 300] [--clients 64] [--cycles 1000] [--image-mib 64] [--sample-seconds 10] [--seed S]
//
// Pass: each agent's open fds return to their level before the clients connected (within 2: peer connections
// and level files come and go), RSS at the end is within 1.25x of RSS a quarter of the way in, the cycles
// leave fds where they were (within 2), and every read is exact. Exit 1 otherwise.

import '../src/polyfill.js'
import { parseArgs } from 'node:util'
import { join } from 'node:path'
import { open } from 'node:fs/promises'
import { setTimeout as delay } from 'node:timers/promises'
import { startDaemon, makeTempDir, removeDir, type TestDaemon } from './lib/agent-process.js'
import { nbdConnect } from './lib/nbd-replay.js'
import { mulberry32, processFigures, writeAgentConfigFile, type ProcessFigures } from './lib/trial-utils.js'
import { makeImage } from '../test/helpers/images.js'

const MiB = 1024 * 1024
const MAX_READ_BYTES = 256 * 1024
/** RSS at the end over RSS after warm-up, at most, for "flat". */
const RSS_GROWTH_LIMIT = 1.25
/** Open fds may differ by this much (peer connections and level files come and go); a leak shows as tens. */
const FD_SLACK = 2

const { values } = parseArgs({
  options: {
    seconds: { type: 'string', default: '300' },
    clients: { type: 'string', default: '64' },
    cycles: { type: 'string', default: '1000' },
    'image-mib': { type: 'string', default: '64' },
    'sample-seconds': { type: 'string', default: '10' },
    seed: { type: 'string', default: '1' }
  },
  strict: true
})
const seconds = Number(values.seconds)
const clients = Number(values.clients)
const cycles = Number(values.cycles)
const imageMiB = Number(values['image-mib'])
const sampleSeconds = Number(values['sample-seconds'])
const seed = Number(values.seed)
if (!(seconds >= 1 && seconds <= 86_400) || !(clients >= 1 && clients <= 1024) || !(cycles >= 0 && cycles <= 1_000_000) ||
  !(imageMiB >= 1 && imageMiB <= 4096) || !(sampleSeconds >= 1) || !Number.isSafeInteger(seed)) {
  process.stderr.write('usage: soak-nbd [--seconds 1..86400] [--clients 1..1024] [--cycles N] [--image-mib M] [--sample-seconds S] [--seed S]\n')
  process.exit(2)
}

const random = mulberry32(seed)
const dir = await makeTempDir('vmt-soak')
const agents: TestDaemon[] = []
let failed = false
const say = (line: string): void => { process.stdout.write(line + '\n') }
const fmt = (f: ProcessFigures): string => `${(f.rssBytes / MiB).toFixed(0).padStart(5)} MiB ${String(f.openFds).padStart(4)} fds ${f.cpuSeconds.toFixed(1).padStart(6)} cpu-s`

try {
  const imagePath = join(dir, 'image.raw')
  const imageBytes = imageMiB * MiB
  await makeImage(imagePath, imageBytes, [[0, imageBytes]])
  const image = await open(imagePath, 'r')
  const expected = async (offset: number, length: number): Promise<Buffer> => {
    const buf = Buffer.alloc(length)
    await image.read(buf, 0, length, offset)
    return buf
  }
  const config = await writeAgentConfigFile(join(dir, 'agent.json'), dir, { p2p: { heartbeatMs: 1000 } })
  agents.push(await startDaemon({ dir: join(dir, 'a0'), args: ['--listen', '/ip4/127.0.0.1/tcp/0', '--config', config], timeoutMs: 180_000 }))
  await agents[0].call('image.register', { id: 'img', path: imagePath })
  const status = await agents[0].call('node.status')
  const peerArgs = ['--listen', '/ip4/127.0.0.1/tcp/0', '--bootstrap', status.listenAddrs[0], '--trust', status.peerId, '--config', config]
  for (let i = 1; i < 4; i++) agents.push(await startDaemon({ dir: join(dir, `a${i}`), args: peerArgs, timeoutMs: 180_000 }))
  for (const [i, a] of agents.entries()) if (i > 0) await a.call('instance.create', { name: 'vm', image: 'img' })
  // Warm-up: each agent reads the whole image once, so peer connections and caches exist before the baseline.
  await Promise.all(agents.map(async agent => {
    const conn = await nbdConnect({ socketPath: agent.nbdSocket, exportName: 'img' }, { timeoutMs: 120_000 })
    try {
      for (let at = 0; at < imageBytes; at += 4 * MiB) await conn.read(at, Math.min(4 * MiB, imageBytes - at))
    } finally { await conn.close() }
  }))
  const pids = agents.map(a => a.process.pid!)
  const before = await Promise.all(pids.map(processFigures))
  say(`soak: ${clients} clients over ${agents.length} agents for ${seconds} s, image ${imageMiB} MiB, seed ${seed}`)
  say(`before  ${before.map(fmt).join(' | ')}`)

  // The soak: every client reads random ranges and checks them, until the deadline.
  const deadline = performance.now() + seconds * 1000
  let reads = 0
  let readBytes = 0
  let wrong = 0
  let errors = 0
  const client = async (index: number): Promise<void> => {
    const agent = agents[index % agents.length]
    const conn = await nbdConnect({ socketPath: agent.nbdSocket, exportName: 'img' }, { timeoutMs: 120_000 })
    try {
      while (performance.now() < deadline) {
        const length = 512 * (1 + Math.floor(random() * (MAX_READ_BYTES / 512)))
        const offset = 512 * Math.floor(random() * ((imageBytes - length) / 512))
        try {
          const data = await conn.read(offset, length)
          if (!data.equals(await expected(offset, length))) wrong++
          reads++
          readBytes += length
        } catch (err) {
          errors++
          throw err
        }
      }
    } finally { await conn.close().catch(() => {}) }
  }
  const running = Promise.allSettled(Array.from({ length: clients }, async (_, i) => await client(i)))
  const samples: ProcessFigures[][] = []
  const startedMs = performance.now()
  let done = false
  void running.then(() => { done = true })
  while (!done && performance.now() < deadline + 120_000) {
    await Promise.race([delay(sampleSeconds * 1000), running])
    const figures = await Promise.all(pids.map(processFigures))
    samples.push(figures)
    say(`t=${String(Math.round((performance.now() - startedMs) / 1000)).padStart(4)}s ${figures.map(fmt).join(' | ')}  reads ${reads}`)
  }
  const settled = await running
  const clientFailures = settled.filter(s => s.status === 'rejected').length
  const afterSoak = await Promise.all(pids.map(processFigures))
  say(`after   ${afterSoak.map(fmt).join(' | ')}`)
  say(`reads ${reads} (${(readBytes / MiB).toFixed(0)} MiB), wrong ${wrong}, read errors ${errors}, clients failed ${clientFailures}`)
  const warm = samples[Math.floor(samples.length / 4)] ?? afterSoak
  const last = samples[samples.length - 1] ?? afterSoak
  for (let i = 0; i < agents.length; i++) {
    const growth = last[i].rssBytes / warm[i].rssBytes
    const fdsBack = afterSoak[i].openFds - before[i].openFds
    say(`agent ${i}: RSS end/warm ${growth.toFixed(2)}x (limit ${RSS_GROWTH_LIMIT}), fds after clients closed ${fdsBack >= 0 ? '+' : ''}${fdsBack}, cpu ${(afterSoak[i].cpuSeconds - before[i].cpuSeconds).toFixed(1)} s`)
    if (growth > RSS_GROWTH_LIMIT || fdsBack > FD_SLACK) failed = true
  }
  if (wrong > 0 || errors > 0 || clientFailures > 0) failed = true

  // Connect/disconnect cycles, spread over the agents: one read each, then a clean disconnect.
  if (cycles > 0) {
    const beforeCycles = await Promise.all(pids.map(processFigures))
    const cycleStart = performance.now()
    for (let i = 0; i < cycles; i++) {
      const conn = await nbdConnect({ socketPath: agents[i % agents.length].nbdSocket, exportName: 'img' }, { timeoutMs: 60_000 })
      await conn.read(0, 4096)
      await conn.close()
    }
    const afterCycles = await Promise.all(pids.map(processFigures))
    say(`${cycles} connect/disconnect cycles in ${((performance.now() - cycleStart) / 1000).toFixed(1)} s`)
    for (let i = 0; i < agents.length; i++) {
      const fdDelta = afterCycles[i].openFds - beforeCycles[i].openFds
      const rssDelta = (afterCycles[i].rssBytes - beforeCycles[i].rssBytes) / MiB
      say(`agent ${i}: fds ${beforeCycles[i].openFds} -> ${afterCycles[i].openFds} (${fdDelta >= 0 ? '+' : ''}${fdDelta}), RSS ${(beforeCycles[i].rssBytes / MiB).toFixed(0)} -> ${(afterCycles[i].rssBytes / MiB).toFixed(0)} MiB (${rssDelta >= 0 ? '+' : ''}${rssDelta.toFixed(1)})`)
      if (fdDelta > FD_SLACK) failed = true
    }
  }
  await image.close()
  say(failed ? 'RESULT: FAIL' : `RESULT: PASS (fds back to their level within ${FD_SLACK}, RSS flat, every read exact)`)
} finally {
  await Promise.all(agents.map(async a => await a.stop().catch(() => null)))
  await removeDir(dir)
}
process.exitCode = failed ? 1 : 0
