// The swarm picture: edges are who fetched from whom with the bytes, agents sit on the row of the depth they
// had while fetching (not the 0 every agent has once it is a seed), and the output is well-formed SVG.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execa } from 'execa'
import { renderSwarmSvg, SwarmRecorder, type SwarmSample } from '../../src/cli/swarm-svg.js'

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
