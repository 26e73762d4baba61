// The swarm picture: edges are who fetched from whom with the bytes, agents sit on the row of the depth they
// had while fetching (not the 0 every agent has once it is a seed), and the output is well-formed SVG.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execa } from 'execa'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPublicKey } from '@libp2p/peer-id'
import { renderSwarmSvg, swarmEdges, SwarmRecorder, type SwarmSample } from '../../src/cli/swarm-svg.js'
import { mergedSample, socketNames } from '../../src/cli/swarm.js'
import type { ImageStatus, NodeStatus } from '../../src/rpc/types.js'

const MiB = 1024 * 1024

function samples (): SwarmSample[] {
  // a fetches from the origin; b from a (depth 2 during the boot); both end as seeds at depth 0.
  const during = (t: number, held: number, depthB: number | null, bytes: number): SwarmSample => ({
    atMs: t,
    originBytesSent: bytes,
    agents: [
      { id: 'A', label: 'agent-1', depth: held < 1 ? 1 : 0, parents: ['O'], heldFraction: held, bytesReceivedByPeer: { O: bytes } },
      { id: 'B', label: 'agent-2', depth: depthB, parents: ['A'], heldFraction: held, bytesReceivedByPeer: { A: bytes / 2, O: bytes / 8 } }
    ]
  })
  return [during(0, 0, null, 0), during(1000, 0.5, 2, 8 * MiB), during(2000, 1, 0, 16 * MiB)]
}

test('edges carry the bytes each agent received from each peer; rows are depths while fetching', async () => {
  const svg = renderSwarmSvg({ title: 'test', originId: 'O', samples: samples() })
  const paths = svg.match(/<path d="M [^"]+"[^>]*marker-end/g) ?? []
  assert.equal(paths.length, 3, 'O->A, A->B, O->B')
  assert.match(svg, />16\.0 MiB</)
  assert.match(svg, />8\.0 MiB</)
  assert.match(svg, />2\.0 MiB</)
  for (const d of [0, 1, 2]) assert.match(svg, new RegExp(`>depth ${d}<`))
  // agent-2's box is on the depth-2 row, below agent-1's.
  const y = (label: string): number => Number(new RegExp(`<rect x="[^"]+" y="([^"]+)"[^>]*/>\\n<text[^>]*>${label}<`).exec(svg)![1])
  assert.ok(y('agent-2') > y('agent-1') && y('agent-1') > y('origin'))
  assert.match(svg, /origin \(vmthunderd\): 16\.0 MiB/)
  assert.match(svg, /central server \(every byte every agent fetched\): 26\.0 MiB/)
  await execa('xmllint', ['--noout', '-'], { input: svg })
})

test('the recorder keeps a bounded number of samples over a long run', () => {
  const recorder = new SwarmRecorder(16)
  for (let i = 0; i < 1000; i++) recorder.add({ atMs: i, originBytesSent: i, agents: [] })
  const kept = recorder.samples()
  assert.ok(kept.length <= 16 && kept.length >= 8, String(kept.length))
  assert.equal(kept[0].atMs, 0)
  assert.ok(kept.at(-1)!.atMs > 900, 'recent samples are kept')
})

// Several agents' views merged (vmthunderctl swarm --socket A --socket B ...): each agent tells its own
// parents and children, so the picture has an edge for every parent relation any of them knows, dashed where
// no bytes moved yet, and the origin's egress from the origin itself when it is sampled.

async function peer (): Promise<{ id: string, keyHex: string }> {
  const key = await generateKeyPair('Ed25519')
  return { id: peerIdFromPublicKey(key.publicKey).toString(), keyHex: Buffer.from(key.publicKey.raw).toString('hex') }
}

function status (peerId: string, originKey: string, image: Partial<ImageStatus>): NodeStatus {
  return { peerId, images: { base: { id: 'base', origin: false, originKey, heldFraction: 0.5, ...image } } } as unknown as NodeStatus
}

test('merged views draw an edge for each parent relation known, from either side, dashed without bytes', async () => {
  const [o, a, b, c, d] = await Promise.all([peer(), peer(), peer(), peer(), peer()])
  const sampled = [
    { name: 'origin', status: status(o.id, o.keyHex, { origin: true, heldFraction: 1, bytesSent: 12 * MiB, children: [a.id, d.id] }) },
    { name: 'host-a', status: status(a.id, o.keyHex, { depth: 1, parents: [o.id], children: [b.id], bytesReceivedByPeer: { [o.id]: 8 * MiB } }) },
    { name: 'host-c', status: status(c.id, o.keyHex, { depth: 2, parents: [a.id, b.id], children: [], bytesReceivedByPeer: { [a.id]: 4 * MiB } }) },
    // The same agent through a second socket counts once.
    { name: 'host-c-again', status: status(c.id, o.keyHex, { depth: 2, parents: [a.id, b.id], children: [], bytesReceivedByPeer: { [a.id]: 4 * MiB } }) }
  ]
  const { sample, originId } = mergedSample(1000, 'base', sampled, false)
  assert.equal(originId, o.id)
  assert.deepEqual(sample.agents.map(x => x.label), ['host-a', 'host-c'])
  assert.equal(sample.originBytesSent, 12 * MiB, 'the origin says what it sent')
  const recording = { title: 'merged', originId, samples: [sample] }
  const edges = swarmEdges(recording).map(e => `${e.from.slice(-4)}>${e.to.slice(-4)}:${e.bytes}`).sort()
  const expected = [[o, a, 8 * MiB], [o, d, 0], [a, b, 0], [a, c, 4 * MiB], [b, c, 0]].map(([x, y, n]) => `${(x as { id: string }).id.slice(-4)}>${(y as { id: string }).id.slice(-4)}:${n as number}`).sort()
  assert.deepEqual(edges, expected)
  const svg = renderSwarmSvg(recording)
  const paths = svg.match(/<path d="M [^"]+"[^>]*marker-end/g) ?? []
  assert.equal(paths.length, 5, 'one arrow per relation')
  assert.equal(paths.filter(p => p.includes('stroke-dasharray')).length, 3, 'the relations without bytes are dashed')
  assert.equal((svg.match(/>parent</g) ?? []).length, 3)
  for (const label of ['origin', 'host-a', 'host-c', b.id.slice(-8), d.id.slice(-8)]) assert.match(svg, new RegExp(`>${label}<`))
  await execa('xmllint', ['--noout', '-'], { input: svg })
})

test('without the origin sampled, its egress is what the sampled agents received from it', async () => {
  const [o, a] = await Promise.all([peer(), peer()])
  const { sample } = mergedSample(1000, 'base', [{ name: 'a', status: status(a.id, o.keyHex, { parents: [o.id], bytesReceivedByPeer: { [o.id]: 3 * MiB } }) }], true)
  assert.equal(sample.originBytesSent, 3 * MiB)
  assert.equal(sample.agents[0].label, 'this agent')
  assert.throws(() => mergedSample(1000, 'other', [{ name: 'a', status: status(a.id, o.keyHex, {}) }], true), { name: 'SwarmImageError' })
})

test('socket names are the file names when they differ, else the directories, else the paths', () => {
  assert.deepEqual(socketNames(['/tmp/host-a.sock', '/tmp/host-b.sock']), ['host-a', 'host-b'])
  assert.deepEqual(socketNames(['/run/a/vmthunderd.sock', '/run/b/vmthunderd.sock']), ['a', 'b'])
  assert.deepEqual(socketNames(['/a/x/c.sock', '/b/x/c.sock']), ['/a/x/c.sock', '/b/x/c.sock'])
})
