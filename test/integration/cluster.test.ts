// A cluster of real vmthunderd processes on loopback: an origin and 8 agents that know only the origin's
// address and key. Every agent reads the whole image through its own NBD export; then a relay (whichever agent a
// reader is fetching from) is killed in the middle of reads and every read still completes with correct data.

import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { execa } from 'execa'
import { startDaemon, makeTempDir, removeDir, type TestDaemon } from '../helpers/daemon.js'
import { makeImage, sha256File } from '../helpers/images.js'
import { waitFor } from '../helpers/wait.js'

const MiB = 1024 * 1024
const IMAGE_BYTES = 16 * MiB
let dir: string
let image: string
let imageSha: string
let origin: TestDaemon
let agents: TestDaemon[] = []
let peerArgs: string[]

before(async () => {
  dir = await makeTempDir('vmt-cluster')
  image = join(dir, 'image.raw')
  await makeImage(image, IMAGE_BYTES, [[0, IMAGE_BYTES]])
  imageSha = await sha256File(image)
  const config = join(dir, 'agent.json')
  await (await import('node:fs/promises')).writeFile(config, JSON.stringify({ prefetch: { enabled: false }, p2p: { heartbeatMs: 500 } }))
  origin = await startDaemon({ dir: join(dir, 'origin'), args: ['--listen', '/ip4/127.0.0.1/tcp/0', '--config', config], allowImageDirs: [dir], timeoutMs: 120_000 })
  await origin.call('image.register', { id: 'img', path: image })
  const status = await origin.call('node.status')
  peerArgs = ['--listen', '/ip4/127.0.0.1/tcp/0', '--bootstrap', status.listenAddrs[0], '--trust', status.peerId, '--config', config]
  // Eight daemons compile and start at once: on a loaded 2-core machine that takes longer than one alone.
  agents = await Promise.all(Array.from({ length: 8 }, async (_, i) => await startDaemon({ dir: join(dir, `a${i}`), args: peerArgs, timeoutMs: 120_000 })))
}, { timeout: 300_000 })

after(async () => {
  await Promise.all([origin, ...agents].map(async d => await d?.stop()))
  await removeDir(dir)
}, { timeout: 60_000 })

/** Starts one nbdcopy of the image per reader (one request at a time: reads last long enough to kill someone). */
function startCopies (readers: TestDaemon[], imageId: string, file: string): Array<Promise<{ a: TestDaemon, ok: boolean, sha: string }>> {
  return readers.map(async (a) => {
    const out = join(a.dir, file)
    const r = await execa('nbdcopy', ['--requests=1', a.nbdUri(imageId), out], { timeout: 240_000, reject: false })
    return { a, ok: r.exitCode === 0, sha: r.exitCode === 0 ? await sha256File(out) : String(r.stderr) }
  })
}

/** Every copy but the killed agent's completed with the image's exact bytes. */
async function assertCopies (copies: Array<Promise<{ a: TestDaemon, ok: boolean, sha: string }>>, killed: TestDaemon, sha: string): Promise<void> {
  for (const r of await Promise.all(copies)) {
    if (r.a === killed) continue
    assert.ok(r.ok, `a reader failed: ${r.sha}`)
    assert.equal(r.sha, sha)
  }
}

test('8 agents read the whole image from each other; the origin sends under 2x the image', { timeout: 300_000 }, async () => {
  await Promise.all(agents.map(async (agent, i) => {
    await agent.call('instance.create', { name: `vm${i}`, image: 'img' })
    const out = join(agent.dir, 'copy.raw')
    await execa('nbdcopy', ['--requests=4', agent.nbdUri('img'), out], { timeout: 240_000 })
    assert.equal(await sha256File(out), imageSha, `agent ${i} read wrong data`)
  }))
  const originStatus = await origin.call('node.status')
  const originImage = originStatus.images.img
  const statuses = await Promise.all(agents.map(async a => await a.call('node.status')))
  // Who took what from the origin, and how much of it as a last resort: what a failure needs to be explained.
  const fromOrigin = statuses.map((s, i) => `a${i}: ${s.images.img.bytesReceivedByPeer[originStatus.peerId] ?? 0} (as a last resort ${s.p2p.blockRequests?.lastResortBytes ?? 0})`)
  assert.ok(originImage.bytesSent < 2 * IMAGE_BYTES, `origin sent ${originImage.bytesSent} bytes for a ${IMAGE_BYTES}-byte image; from the origin: ${fromOrigin.join('; ')}`)
  for (const s of statuses) {
    assert.equal(s.images.img.heldFraction, 1)
    assert.ok(s.images.img.parents.length <= 3)
  }
  const originId = originStatus.peerId as string
  const fromPeers = statuses.reduce((sum, s) => sum + Object.entries(s.images.img.bytesReceivedByPeer as Record<string, number>)
    .filter(([peer]) => peer !== originId).reduce((a, [, n]) => a + n, 0), 0)
  assert.ok(fromPeers > 0, 'agents served each other')
})

test('killing a relay in the middle of reads: every read completes with correct data', { timeout: 300_000 }, async () => {
  // A second image, so that nobody holds it yet.
  const image2 = join(dir, 'image2.raw')
  await makeImage(image2, IMAGE_BYTES, [[0, IMAGE_BYTES]])
  const sha2 = await sha256File(image2)
  await origin.call('image.register', { id: 'img2', path: image2 })
  const originId = (await origin.call('node.status')).peerId
  // The first agent reads the image first, so it is a likely relay for the others.
  await agents[0].call('instance.create', { name: 'relay-vm', image: 'img2' })
  await execa('nbdcopy', ['--requests=4', `${agents[0].nbdUri('img2')}`, join(agents[0].dir, 'warm.raw')], { timeout: 240_000 })
  const candidates = agents.slice(0, 5)
  const byPeerId = new Map(await Promise.all(candidates.map(async a => [(await a.call('node.status')).peerId as string, a] as const)))
  const readers = agents.slice(1, 5)
  await Promise.all(readers.map(async (a, i) => await a.call('instance.create', { name: `r${i}`, image: 'img2' })))
  const copies = startCopies(readers, 'img2', 'copy2.raw')
  // Kill a relay as soon as a reader has received something from it. Which agent relays is the tree's choice
  // (the warm agent or a reader that took the origin's slot): on a loaded host either happens.
  const relay: TestDaemon = await waitFor('a reader to receive blocks from a relay', async () => {
    const statuses = await Promise.all(readers.map(async a => await a.call('node.status').catch(() => undefined)))
    for (const s of statuses) {
      for (const [peer, bytes] of Object.entries((s?.images?.img2?.bytesReceivedByPeer ?? {}) as Record<string, number>)) {
        if (peer !== originId && bytes > 0 && byPeerId.has(peer)) return byPeerId.get(peer)
      }
    }
    return undefined
  }, { timeoutMs: 120_000, maxIntervalMs: 50 })
  await relay.kill()
  await assertCopies(copies, relay, sha2)
})

test('killing the origin\'s only child mid-read: the orphans reattach and every read completes correctly', { timeout: 300_000 }, async () => {
  const image3 = join(dir, 'image3.raw')
  await makeImage(image3, IMAGE_BYTES, [[0, IMAGE_BYTES]])
  const sha3 = await sha256File(image3)
  await origin.call('image.register', { id: 'img3', path: image3 })
  const originId = (await origin.call('node.status')).peerId
  // Whatever the tests before did (or whether they ran), the agents still up take part.
  const live = agents.filter(a => a.process.exitCode === null && a.process.signalCode === null)
  assert.ok(live.length >= 3, `only ${live.length} agents are up`)
  await Promise.all(live.map(async (a, i) => await a.call('instance.create', { name: `o${i}`, image: 'img3' })))
  const reads = startCopies(live, 'img3', 'copy3.raw')
  // The origin admits one child per image: find it once it relays to someone, and kill it.
  const victim: TestDaemon = await waitFor('the origin\'s child to relay', async () => {
    const statuses = await Promise.all(live.map(async a => ({ a, s: await a.call('node.status').catch(() => undefined) })))
    return statuses.find(({ s }) => s?.images?.img3?.parents?.includes(originId) === true && (s?.images?.img3?.bytesSent ?? 0) > 0)?.a
  }, { timeoutMs: 120_000, maxIntervalMs: 50 })
  await victim.kill()
  await assertCopies(reads, victim, sha3)
})
