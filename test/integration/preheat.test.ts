// Cluster preheat with real daemons over TCP: the origin asks the cluster to pull an image; agents that trust
// it pull the whole image in the background with no VM on it, an agent that does not trust it pulls nothing,
// `vmthunderctl image preheat --wait` follows the cluster's progress, and a repeated request changes nothing.

import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { join } from 'node:path'
import { writeFile, readFile } from 'node:fs/promises'
import { execa } from 'execa'
import { startDaemon, makeTempDir, removeDir, CTL_BIN, type TestDaemon } from '../helpers/daemon.js'
import { makeImage } from '../helpers/images.js'

const MiB = 1024 * 1024
let dir: string
let origin: TestDaemon
let trusting: TestDaemon[] = []
let untrusting: TestDaemon

async function waitUntil (what: string, predicate: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise(resolve => setTimeout(resolve, 100)) // bounded polling of the daemons' state
  }
}

before(async () => {
  dir = await makeTempDir('vmt-preheat')
  const image = join(dir, 'base.raw')
  await makeImage(image, 16 * MiB, [[0, 16 * MiB]])
  const config = join(dir, 'agent.json')
  await writeFile(config, JSON.stringify({ p2p: { heartbeatMs: 500 } }))
  origin = await startDaemon({ dir: join(dir, 'origin'), args: ['--listen', '/ip4/127.0.0.1/tcp/0', '--config', config], allowImageDirs: [dir] })
  await origin.call('image.register', { id: 'base', path: image })
  const status = await origin.call('node.status')
  const common = ['--listen', '/ip4/127.0.0.1/tcp/0', '--bootstrap', status.listenAddrs[0], '--config', config]
  trusting = await Promise.all([0, 1].map(async i => await startDaemon({ dir: join(dir, `a${i}`), args: [...common, '--trust', status.peerId] })))
  untrusting = await startDaemon({ dir: join(dir, 'u'), args: common })
  await waitUntil('the agents to connect', async () => (await origin.call('node.status')).p2p.peers >= 3, 60_000)
}, { timeout: 180_000 })

after(async () => {
  await Promise.all([origin, untrusting, ...trusting].map(async d => await d?.stop()))
  await removeDir(dir)
}, { timeout: 60_000 })

test('trusting agents pull the whole image with no VM; an untrusting one ignores the request', { timeout: 240_000 }, async () => {
  const ctl = ['--socket', origin.socket, '--json', 'image', 'preheat', 'base']
  const first = JSON.parse((await execa(process.execPath, [CTL_BIN, ...ctl])).stdout)
  assert.equal(first.imageId, 'base')
  assert.match(first.root, /^[0-9a-f]{64}$/)
  // The same request again, now following the cluster until it is done.
  const waited = await execa(process.execPath, [CTL_BIN, ...ctl, '--wait', '--timeout-s', '180'], { reject: false })
  assert.equal(waited.exitCode, 0, waited.stderr)
  const final = JSON.parse(waited.stdout).status
  assert.ok(final.agents.length >= 1 && final.agents.every((a: { state: string }) => a.state === 'done' || a.state === 'refused'), JSON.stringify(final))
  await waitUntil('the trusting agents to hold the image', async () => {
    const statuses = await Promise.all(trusting.map(async d => await d.call('node.status')))
    return statuses.every(s => s.images.base?.heldFraction === 1)
  }, 180_000)
  for (const agent of trusting) {
    const s = await agent.call('node.status')
    assert.equal(s.images.base.root, first.root)
    assert.deepEqual(s.images.base.instances, [])
    // Idempotent: two requests, one pull.
    assert.equal(agent.log().split('\n').filter(l => l.includes('"message":"preheat requested"')).length, 1, agent.log())
  }
  const cluster = await origin.call('image.preheat.status', { id: 'base' })
  const reported = new Set(cluster.agents.map((a: { peerId: string }) => a.peerId))
  for (const agent of trusting) assert.ok(reported.has((await agent.call('node.status')).peerId), 'each pulling agent reports its progress')
  const u = await untrusting.call('node.status')
  assert.equal(u.images.base, undefined, 'an agent that does not trust the signer pulls nothing')
  // ... and says so, so the requester can tell who refused.
  assert.equal(cluster.agents.find((a: { peerId: string }) => a.peerId === u.peerId)?.state, 'refused')
  assert.match(untrusting.log(), /"message":"preheat request from an untrusted signer refused"/)
})

test('vmthunderctl swarm --svg draws what a live agent fetched from whom', { timeout: 60_000 }, async () => {
  const file = join(dir, 'swarm.svg')
  const result = JSON.parse((await execa(process.execPath, [CTL_BIN, '--socket', trusting[0].socket, '--json', 'swarm', '--svg', file, '--image', 'base', '--count', '2', '--interval-s', '0.2'])).stdout)
  assert.equal(result.samples, 2)
  const status = await trusting[0].call('node.status')
  const peers = Object.entries(status.images.base.bytesReceivedByPeer as Record<string, number>).filter(([, n]) => n > 0)
  assert.ok(peers.length >= 1, 'the agent fetched the image from someone')
  const svg = await readFile(file, 'utf8')
  assert.match(svg, />this agent</)
  // An edge per peer it received bytes from, and per parent or child it has (those may change between samples).
  const arrows = (svg.match(/marker-end="url\(#arrow\)"/g) ?? []).length
  assert.ok(arrows >= peers.length, `${arrows} arrows, ${peers.length} peers sent bytes`)
  assert.equal(result.edges, arrows)
  await execa('xmllint', ['--noout', file])
})

test('vmthunderctl swarm --svg with several sockets merges the agents\' views into one picture', { timeout: 60_000 }, async () => {
  const file = join(dir, 'swarm-merged.svg')
  // Bytes received only grow: every edge that moved bytes before the picture is in it.
  const moved = new Set<string>()
  for (const agent of trusting) {
    const status = await agent.call('node.status')
    for (const [from, bytes] of Object.entries(status.images.base.bytesReceivedByPeer as Record<string, number>)) if (bytes > 0) moved.add(`${from} ${status.peerId}`)
  }
  assert.ok(moved.size >= 2, 'both agents fetched the image')
  const sockets = [origin, ...trusting].flatMap(d => ['--socket', d.socket])
  const result = JSON.parse((await execa(process.execPath, [CTL_BIN, ...sockets, '--json', 'swarm', '--svg', file, '--image', 'base'])).stdout)
  assert.equal(result.agents, 3)
  const svg = await readFile(file, 'utf8')
  for (const label of ['origin', 'a0', 'a1']) assert.match(svg, new RegExp(`>${label}<`))
  const arrows = (svg.match(/marker-end="url\(#arrow\)"/g) ?? []).length
  assert.ok(arrows >= moved.size, `${arrows} arrows, ${moved.size} edges moved bytes`)
  assert.equal(result.edges, arrows)
  assert.match(svg, /swarm of base as 3 agents see it/)
  await execa('xmllint', ['--noout', file])
  // Other commands take one socket.
  const refused = await execa(process.execPath, [CTL_BIN, ...sockets, 'image', 'list'], { reject: false })
  assert.equal(refused.exitCode, 2)
  assert.match(refused.stderr, /only swarm takes more than one --socket/)
})

test('image.preheat of an unknown image is refused with a clear error', { timeout: 90_000 }, async () => {
  const result = await execa(process.execPath, [CTL_BIN, '--socket', trusting[0].socket, 'image', 'preheat', 'nope'], { reject: false })
  assert.equal(result.exitCode, 1)
  assert.match(result.stderr, /image 'nope' is not on this agent and no peer supplied its manifest/)
})
