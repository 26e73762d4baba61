// The demo: an origin agent and N agents (separate vmthunderd processes on loopback) boot the same image at
// once. The origin registers the image; every agent creates an instance (fetching the manifest from peers)
// and replays the real Debian 12 boot trace through its own NBD export, blocks coming from the peers it
// chose. A live progress view, then a summary table and the tree as SVG and DOT.
//
//   npm run demo -- [--agents N] [--json] [--think] [--image FILE] [--trace FILE] [--out DIR] [--keep]

import '../src/polyfill.js'
import { parseArgs } from 'node:util'
import { join, resolve } from 'node:path'
import { mkdir, writeFile } from 'node:fs/promises'
import { startDaemon, makeTempDir, removeDir, ROOT, type TestDaemon } from './lib/agent-process.js'
import { loadTrace, nbdConnect, distinctBytes, type TraceRead } from './lib/nbd-replay.js'
import { makeTraceImage } from './lib/trace-image.js'
import { guestPaths } from '../test/helpers/vm.js'
import { formatBytes, table } from '../src/cli/format.js'
import { renderTreeDot, renderTreeSvg, type TreeNode } from './lib/tree-render.js'

const { values: opts } = parseArgs({
  options: {
    agents: { type: 'string', default: '8' },
    json: { type: 'boolean', default: false },
    think: { type: 'boolean', default: false },
    image: { type: 'string' },
    trace: { type: 'string', default: join(ROOT, 'test', 'fixtures', 'debian12-boot.reads.csv') },
    out: { type: 'string', default: 'demo-out' },
    keep: { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false }
  }
})
if (opts.help) {
  process.stdout.write('usage: npm run demo -- [--agents N] [--json] [--think] [--image FILE] [--trace FILE] [--out DIR] [--keep]\n')
  process.exit(0)
}
const agentCount = Number(opts.agents)
if (!Number.isInteger(agentCount) || agentCount < 1 || agentCount > 64) {
  process.stderr.write('demo: --agents takes a whole number from 1 to 64\n')
  process.exit(2)
}
const say = (text: string): void => { if (!opts.json) process.stdout.write(text) }
const IMAGE_ID = 'debian12'

interface AgentRun {
  name: string
  daemon: TestDaemon
  readsDone: number
  bytesDone: number
  startedMs: number
  finishedMs?: number
  maxReadMs: number
  error?: string
  digest?: string
}

async function main (): Promise<number> {
  const reads = await loadTrace(opts.trace)
  const work = await makeTempDir('vmt-demo')
  const agents: AgentRun[] = []
  let origin: TestDaemon | undefined
  const stopAll = async (): Promise<void> => {
    await Promise.all([origin, ...agents.map(a => a.daemon)].map(async d => await d?.stop().catch(() => {})))
    if (!opts.keep) await removeDir(work)
  }
  process.once('SIGINT', () => { void stopAll().then(() => process.exit(130)) })
  try {
    // 1. The image: the given file, the boot-test guest when it is built, or a generated 1 GiB image with
    //    data wherever the trace reads (the trace's offsets refer to a 1 GiB image).
    let imagePath = opts.image === undefined ? undefined : resolve(opts.image)
    if (imagePath === undefined) imagePath = guestPaths()?.raw
    if (imagePath === undefined) {
      imagePath = join(work, 'image.raw')
      say('generating a 1 GiB image with data where the boot trace reads ...\n')
      await makeTraceImage(imagePath, reads, 1024 * 1024 * 1024)
    }

    // 2. The origin: an agent that registers the image.
    const listen = ['--listen', '/ip4/127.0.0.1/tcp/0']
    origin = await startDaemon({ dir: join(work, 'origin'), args: listen })
    const registered = await origin.call('image.register', { id: IMAGE_ID, path: imagePath })
    const originStatus = await origin.call('node.status')
    const bootstrap = originStatus.listenAddrs.find((a: string) => a.includes('/tcp/')) as string
    say(`origin ${originStatus.peerId.slice(-8)} registered ${IMAGE_ID}: ${formatBytes(registered.sizeBytes)}, ${registered.cache.blockCount} blocks; boot trace: ${reads.length} reads, ${formatBytes(distinctBytes(reads))} distinct\n`)

    // 3. N agents that know only the origin's address and key.
    const peerArgs = [...listen, '--bootstrap', bootstrap, '--trust', originStatus.publicKey]
    const daemons = await Promise.all(Array.from({ length: agentCount }, async (_, i) => await startDaemon({ dir: join(work, `agent-${i + 1}`), args: peerArgs })))
    daemons.forEach((daemon, i) => agents.push({ name: `agent-${i + 1}`, daemon, readsDone: 0, bytesDone: 0, startedMs: 0, maxReadMs: 0 }))
    say(`${agentCount} agents started; each creates an instance and replays the boot trace${opts.think ? ' with its think times' : ' as fast as it can'}\n\n`)

    // 4. Every agent boots at once.
    const t0 = performance.now()
    const progress = startProgress(agents, reads.length, t0)
    await Promise.all(agents.map(async agent => {
      agent.startedMs = performance.now()
      try {
        await agent.daemon.call('instance.create', { name: `vm-${agent.name}`, image: IMAGE_ID })
        await replay(agent, reads)
      } catch (err) {
        agent.error = (err as Error).message
      }
      agent.finishedMs = performance.now()
    }))
    progress.stop()

    // 5. What happened.
    const statuses = await Promise.all(agents.map(async a => await a.daemon.call('node.status')))
    const finalOrigin = await origin.call('node.status')
    const originId = finalOrigin.peerId as string
    const rows = agents.map((agent, i) => {
      const image = statuses[i].images[IMAGE_ID] ?? {}
      const byPeer: Record<string, number> = image.bytesReceivedByPeer ?? {}
      const fromOrigin = byPeer[originId] ?? 0
      const total = Object.values(byPeer).reduce((s, n) => s + n, 0)
      return {
        agent: agent.name,
        peerId: statuses[i].peerId as string,
        seconds: agent.finishedMs === undefined ? null : (agent.finishedMs - agent.startedMs) / 1000,
        maxReadMs: agent.maxReadMs,
        bytesFromOrigin: fromOrigin,
        bytesFromPeers: total - fromOrigin,
        parents: (image.parents ?? []) as string[],
        depth: image.depth ?? null,
        heldFraction: image.heldFraction ?? 0,
        ok: agent.error === undefined && agent.digest === agents[0].digest,
        error: agent.error
      }
    })
    const originImage = finalOrigin.images[IMAGE_ID] ?? {}
    const summary = {
      agents: agentCount,
      imageBytes: registered.sizeBytes,
      traceReads: reads.length,
      traceDistinctBytes: distinctBytes(reads),
      wallSeconds: (performance.now() - t0) / 1000,
      originBytesSent: originImage.bytesSent ?? 0,
      allCorrect: rows.every(r => r.ok),
      rows
    }
    const nodes: TreeNode[] = [
      { id: originId, label: 'origin', depth: 0, parents: [] },
      ...rows.map(r => ({ id: r.peerId, label: r.agent, depth: r.depth, parents: r.parents }))
    ]
    const out = resolve(opts.out)
    await mkdir(out, { recursive: true })
    await writeFile(join(out, 'tree.dot'), renderTreeDot(nodes))
    await writeFile(join(out, 'tree.svg'), renderTreeSvg(nodes, `vmthunderd demo: ${agentCount} agents, image ${IMAGE_ID}`))
    await writeFile(join(out, 'summary.json'), JSON.stringify(summary, null, 2) + '\n')
    if (opts.json) {
      process.stdout.write(JSON.stringify(summary, null, 2) + '\n')
    } else {
      const short = (id: string): string => id === originId ? 'origin' : (rows.find(r => r.peerId === id)?.agent ?? id.slice(-8))
      say('\n' + table(['AGENT', 'TIME', 'LONGEST READ', 'FROM ORIGIN', 'FROM PEERS', 'DEPTH', 'PARENTS', 'DATA'], rows.map(r => [
        r.agent,
        r.seconds === null ? '-' : `${r.seconds.toFixed(2)} s`,
        `${r.maxReadMs.toFixed(0)} ms`,
        formatBytes(r.bytesFromOrigin),
        formatBytes(r.bytesFromPeers),
        r.depth === null ? '-' : String(r.depth),
        r.parents.map(short).join(',') || '-',
        r.ok ? 'ok' : `BAD ${r.error ?? 'digest differs'}`
      ])))
      say(`\norigin sent ${formatBytes(summary.originBytesSent)} for ${agentCount} agents (trace's distinct bytes ${formatBytes(summary.traceDistinctBytes)}; a central server would send about ${formatBytes(summary.traceDistinctBytes * agentCount)})\n`)
      say(`tree: ${join(out, 'tree.svg')} (and tree.dot for Graphviz); summary: ${join(out, 'summary.json')}\n`)
    }
    return summary.allCorrect ? 0 : 1
  } finally {
    await stopAll()
  }
}

/** Replays the trace on the agent's own NBD export, one read at a time (as a booting VM issues them). */
async function replay (agent: AgentRun, reads: TraceRead[]): Promise<void> {
  const { createHash } = await import('node:crypto')
  const conn = await nbdConnect({ socketPath: agent.daemon.nbdSocket, exportName: IMAGE_ID })
  const hash = createHash('sha256')
  const start = performance.now()
  try {
    for (const r of reads) {
      if (opts.think) {
        const wait = r.timeMs - (performance.now() - start)
        if (wait > 0) await new Promise(resolve => setTimeout(resolve, wait))
      }
      const t = performance.now()
      const data = await conn.read(r.offset, r.length)
      agent.maxReadMs = Math.max(agent.maxReadMs, performance.now() - t)
      hash.update(data)
      agent.readsDone++
      agent.bytesDone += data.length
    }
  } finally {
    await conn.close()
  }
  agent.digest = hash.digest('hex')
}

function startProgress (agents: AgentRun[], total: number, t0: number): { stop: () => void } {
  const tty = process.stdout.isTTY && !opts.json
  let drawn = 0
  const draw = (): void => {
    if (opts.json) return
    const lines = agents.map(a => {
      const width = 30
      const done = Math.round(width * a.readsDone / total)
      const state = a.error !== undefined ? 'failed' : a.finishedMs !== undefined ? 'done' : ''
      return `${a.name.padEnd(9)} [${'#'.repeat(done)}${'.'.repeat(width - done)}] ${String(a.readsDone).padStart(5)}/${total} reads ${formatBytes(a.bytesDone).padStart(9)} ${state}`
    })
    const head = `t = ${((performance.now() - t0) / 1000).toFixed(1)} s`
    if (tty) {
      if (drawn > 0) process.stdout.write(`\x1b[${drawn}A`)
      process.stdout.write([head, ...lines].map(l => l + '\x1b[K').join('\n') + '\n')
      drawn = lines.length + 1
    } else {
      const done = agents.filter(a => a.finishedMs !== undefined).length
      const readsDone = agents.reduce((s, a) => s + a.readsDone, 0)
      process.stdout.write(`${head}: ${done}/${agents.length} agents done, ${readsDone}/${total * agents.length} reads\n`)
    }
  }
  const timer = setInterval(draw, tty ? 250 : 2000)
  return { stop: () => { clearInterval(timer); draw() } }
}

process.exitCode = await main()
