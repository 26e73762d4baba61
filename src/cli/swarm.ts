// `vmthunderctl swarm --svg FILE`: the swarm picture of src/cli/swarm-svg.ts for a live agent, sampled from
// its node.status --count times, --interval-s apart. An agent knows its own parents, children and the bytes
// it received from each peer, not the rest of the tree (adverts carry depth and holdings, not parents): the
// picture is the swarm as this agent sees it. The demo draws the whole cluster, having every agent's status.

import { writeFile } from 'node:fs/promises'
import { peerIdFromPublicKey } from '@libp2p/peer-id'
import { publicKeyFromRaw } from '@libp2p/crypto/keys'
import type { NodeStatus } from '../rpc/types.js'
import { SwarmRecorder, renderSwarmSvg, type SwarmSample } from './swarm-svg.js'

export class SwarmImageError extends Error {
  override name = 'SwarmImageError'
}

export async function writeSwarmSvg (options: {
  status: () => Promise<NodeStatus>
  file: string
  imageId?: string
  count: number
  intervalMs: number
  signal?: AbortSignal
}): Promise<{ imageId: string, samples: number, edges: number }> {
  const recorder = new SwarmRecorder()
  let imageId = options.imageId
  let originId = ''
  let last: NodeStatus | undefined
  for (let i = 0; i < options.count; i++) {
    if (i > 0) await new Promise(resolve => setTimeout(resolve, options.intervalMs))
    options.signal?.throwIfAborted()
    const status = await options.status()
    last = status
    imageId ??= Object.keys(status.images).sort()[0]
    const image = imageId === undefined ? undefined : status.images[imageId]
    if (image === undefined) throw new SwarmImageError(imageId === undefined ? 'this agent has no image' : `this agent has no image '${imageId}'`)
    originId = image.origin ? status.peerId : peerIdFromPublicKey(publicKeyFromRaw(Buffer.from(image.originKey, 'hex'))).toString()
    const byPeer = image.bytesReceivedByPeer ?? {}
    const sample: SwarmSample = {
      atMs: Date.now(),
      // From here the origin's egress is what it sent this agent, or all it sent when this agent is the origin.
      originBytesSent: image.origin ? (image.bytesSent ?? 0) : (byPeer[originId] ?? 0),
      agents: image.origin
        ? []
        : [{ id: status.peerId, label: 'this agent', depth: image.depth ?? null, parents: image.parents ?? [], heldFraction: image.heldFraction, bytesReceivedByPeer: byPeer }]
    }
    recorder.add(sample)
  }
  const samples = recorder.samples()
  const title = `swarm of ${imageId} as agent ${last!.peerId.slice(-8)} sees it (${samples.length} sample${samples.length === 1 ? '' : 's'})`
  await writeFile(options.file, renderSwarmSvg({ title, originId, samples }))
  return { imageId: imageId!, samples: samples.length, edges: Object.keys(samples.at(-1)?.agents[0]?.bytesReceivedByPeer ?? {}).length }
}
