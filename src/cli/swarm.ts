// `vmthunderctl swarm --svg FILE [--socket A --socket B ...]`: the swarm picture of src/cli/swarm-svg.ts for
// live agents, sampled from their node.status --count times, --interval-s apart. An agent knows its own
// parents, children and the bytes it received from each peer, not the rest of the tree: adverts carry depth,
// holdings and a child count, not parents (ids of up to 64 parents do not fit the advert's 768 bytes beside
// its summary and addresses). So one socket draws that agent's view; several sockets (forwarded with ssh from
// other hosts, say) are merged into one picture, each agent telling its own relations.

import { writeFile } from 'node:fs/promises'
import { basename, dirname } from 'node:path'
import { peerIdOfPublicKey } from '../identity/key.js'
import type { NodeStatus } from '../rpc/types.js'
import { SwarmRecorder, renderSwarmSvg, swarmEdges, swarmSample, type SwarmSample } from './swarm-svg.js'

export class SwarmImageError extends Error {
  override name = 'SwarmImageError'
}

/** One control socket: a name for the picture, and how to ask it for node.status. */
export interface SwarmSource {
  name: string
  status: () => Promise<NodeStatus>
}

/**
 * Names of sockets for the picture's boxes: the file names without .sock when those differ (host-a.sock,
 * host-b.sock), else their directories' names (a/ctl.sock, b/ctl.sock), else the whole paths.
 */
export function socketNames (paths: readonly string[]): string[] {
  for (const name of [(p: string) => basename(p).replace(/\.sock$/, ''), (p: string) => basename(dirname(p))]) {
    const names = paths.map(name)
    if (new Set(names).size === names.length) return names
  }
  return [...paths]
}

function originIdOf (image: NodeStatus['images'][string], status: NodeStatus): string {
  return image.origin ? status.peerId : peerIdOfPublicKey(Buffer.from(image.originKey, 'hex'))
}

/**
 * One sample merged from the agents' statuses (the same agent twice counts once). The origin's egress is what
 * it says it sent when it is sampled, else what the sampled agents received from it.
 */
export function mergedSample (atMs: number, imageId: string, sampled: Array<{ name: string, status: NodeStatus }>, single: boolean): { sample: SwarmSample, originId: string } {
  const holding = sampled.filter(({ status }, i) => status.images[imageId] !== undefined && sampled.findIndex(s => s.status.peerId === status.peerId) === i)
  if (holding.length === 0) throw new SwarmImageError(`no sampled agent has image '${imageId}'`)
  const originId = originIdOf(holding[0].status.images[imageId], holding[0].status)
  const origin = holding.find(({ status }) => status.peerId === originId)?.status
  const agents = holding.filter(({ status }) => status.peerId !== originId)
    .map(({ name, status }) => ({ label: single ? 'this agent' : name, status }))
  const sample = swarmSample(atMs, imageId, origin, agents)
  if (origin === undefined) sample.originBytesSent = sample.agents.reduce((sum, a) => sum + (a.bytesReceivedByPeer[originId] ?? 0), 0)
  return { sample, originId }
}

export async function writeSwarmSvg (options: {
  sources: SwarmSource[]
  file: string
  imageId?: string
  count: number
  intervalMs: number
  signal?: AbortSignal
}): Promise<{ imageId: string, samples: number, agents: number, edges: number }> {
  const recorder = new SwarmRecorder()
  const single = options.sources.length === 1
  let imageId = options.imageId
  let originId = ''
  let agents = 0
  let firstPeerId = ''
  for (let i = 0; i < options.count; i++) {
    if (i > 0) await new Promise(resolve => setTimeout(resolve, options.intervalMs))
    options.signal?.throwIfAborted()
    const sampled = await Promise.all(options.sources.map(async s => ({ name: s.name, status: await s.status() })))
    firstPeerId = sampled[0].status.peerId
    imageId ??= sampled.flatMap(({ status }) => Object.keys(status.images)).sort()[0]
    if (imageId === undefined) throw new SwarmImageError(single ? 'this agent has no image' : 'no sampled agent has an image')
    if (single && sampled[0].status.images[imageId] === undefined) throw new SwarmImageError(`this agent has no image '${imageId}'`)
    const merged = mergedSample(Date.now(), imageId, sampled, single)
    originId = merged.originId
    agents = new Set(sampled.filter(s => s.status.images[imageId!] !== undefined).map(s => s.status.peerId)).size
    recorder.add(merged.sample)
  }
  const samples = recorder.samples()
  const who = single ? `as agent ${firstPeerId.slice(-8)} sees it` : `as ${agents} agents see it`
  const recording = { title: `swarm of ${imageId} ${who} (${samples.length} sample${samples.length === 1 ? '' : 's'})`, originId, samples }
  await writeFile(options.file, renderSwarmSvg(recording))
  return { imageId: imageId!, samples: samples.length, agents, edges: swarmEdges(recording).length }
}
