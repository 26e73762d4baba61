// Prometheus metrics of one agent, pulled at scrape time from the daemon's own status (the node.status
// shape, src/rpc/types.ts) and counters: collect() callbacks read a snapshot taken once per scrape, so the
// data path pays nothing (except the read-latency timer, see read-latency.ts).
// Names follow Prometheus conventions: vmthunder_ prefix, base units (bytes, seconds), _total for counters.

import { Registry, Counter, Gauge, Histogram } from 'prom-client'
import type { NodeStatus, ImageStatus } from '../rpc/types.js'
import { READ_LATENCY_BUCKETS_S } from './read-latency.js'
import type { ErrorCounts } from './error-count.js'
import { peerIdOfPublicKey } from '../identity/key.js'

export interface MetricsSources {
  /** The node.status result. */
  status: () => Promise<NodeStatus>
  /** Bytes the caches hold on disk, and the quota (null: none). */
  cacheBytes: () => number
  quotaBytes: number | null
  errors: ErrorCounts
  version: string
}

export interface AgentMetrics {
  registry: Registry
  readLatency: Histogram<'image'>
  /** Takes the snapshot the collectors read, then renders the exposition text. */
  render: () => Promise<string>
}

function sourceOf (peerId: string, originPeerId: string | undefined): 'origin' | 'peer' {
  return peerId === originPeerId ? 'origin' : 'peer'
}

/** The libp2p peer id of an origin's public key (hex Ed25519), memoised: one per image at most. */
function originPeerIds (): (originKeyHex: string) => string | undefined {
  const known = new Map<string, string | undefined>()
  return hex => {
    if (!known.has(hex)) {
      let id: string | undefined
      try { id = peerIdOfPublicKey(Buffer.from(hex, 'hex')) } catch {}
      if (known.size < 4096) known.set(hex, id)
      return id
    }
    return known.get(hex)
  }
}

export function createAgentMetrics (sources: MetricsSources): AgentMetrics {
  const originPeerIdOf = originPeerIds()
  const registry = new Registry()
  let snapshot: NodeStatus | undefined
  const images = (): ImageStatus[] => Object.values(snapshot?.images ?? {})

  // Totals and levels kept elsewhere: each collector replaces its samples at scrape time.
  type Samples<L extends string> = () => Array<[Record<L, string>, number]>
  const totalCounter = <L extends string>(name: string, help: string, labelNames: L[], values: Samples<L>): void => {
    new Counter<L>({ name, help, labelNames, registers: [registry], collect () { this.reset(); for (const [l, v] of values()) this.inc(l as any, Math.max(0, v)) } })
  }
  const gauge = <L extends string>(name: string, help: string, labelNames: L[], values: Samples<L>): void => {
    new Gauge<L>({ name, help, labelNames, registers: [registry], collect () { this.reset(); for (const [l, v] of values()) this.set(l as any, v) } })
  }
  const perImage = (pick: (i: ImageStatus) => number | null | undefined): () => Array<[Record<'image', string>, number]> => () =>
    images().flatMap(i => { const v = pick(i); return v === null || v === undefined || !Number.isFinite(v) ? [] : [[{ image: i.id }, v]] })

  gauge('vmthunder_build_info', 'Version of this agent (always 1).', ['version'], () => [[{ version: sources.version }, 1]])
  totalCounter('vmthunder_image_read_bytes_total', 'Bytes NBD clients (VMs) read from the image on this host.', ['image'], perImage(i => i.cache.readBytes))
  totalCounter('vmthunder_image_read_requests_total', 'NBD read requests of the image on this host.', ['image'], perImage(i => i.cache.readRequests))
  totalCounter('vmthunder_image_cache_hits_total', 'Blocks a read found in the local cache.', ['image'], perImage(i => i.cache.hitBlocks))
  totalCounter('vmthunder_image_cache_misses_total', 'Blocks a read had to wait for.', ['image'], perImage(i => i.cache.missBlocks))
  totalCounter('vmthunder_image_fetched_bytes_total', 'Bytes of the image fetched into the cache, by source: origin (the image server agent), peer (any other agent), file (the origin reads its own image file).', ['image', 'source'], () =>
    images().flatMap(i => {
      if (i.origin) return [[{ image: i.id, source: 'file' }, i.cache.fetchedBytes]] as Array<[Record<'image' | 'source', string>, number]>
      const originPeer = originPeerIdOf(i.originKey)
      const bySource = { origin: 0, peer: 0 }
      for (const [peer, bytes] of Object.entries(i.bytesReceivedByPeer ?? {})) bySource[sourceOf(peer, originPeer)] += bytes
      return [[{ image: i.id, source: 'origin' }, bySource.origin], [{ image: i.id, source: 'peer' }, bySource.peer]] as Array<[Record<'image' | 'source', string>, number]>
    }))
  totalCounter('vmthunder_image_prefetched_bytes_total', 'Of the fetched bytes, those prefetch asked for (no VM waited).', ['image'], perImage(i => i.cache.prefetchedBytes))
  totalCounter('vmthunder_image_served_bytes_total', 'Bytes of the image this agent sent to peers.', ['image'], perImage(i => i.bytesSent ?? 0))
  totalCounter('vmthunder_image_corrupt_blocks_total', 'Blocks that failed verification against the signed manifest (the sender is banned).', ['image'], perImage(i => i.cache.corruptBlocks))
  gauge('vmthunder_image_size_bytes', 'Size of the image.', ['image'], perImage(i => i.sizeBytes))
  gauge('vmthunder_image_held_ratio', 'Share of the image\'s blocks this host holds (1: a seed).', ['image'], perImage(i => i.heldFraction))
  gauge('vmthunder_image_depth', 'Hops from a seed in the image\'s distribution tree (0: seed); absent while the agent has no parent.', ['image'], perImage(i => i.depth))
  gauge('vmthunder_image_parents', 'Peers this agent fetches the image from.', ['image'], perImage(i => i.parents?.length))
  gauge('vmthunder_image_children', 'Peers this agent serves the image to.', ['image'], perImage(i => i.children?.length))
  gauge('vmthunder_image_candidates', 'Peers that advertise the image.', ['image'], perImage(i => i.candidates))
  gauge('vmthunder_image_instances', 'VM instances on this host backed by the image.', ['image'], perImage(i => i.instances.length))
  gauge('vmthunder_image_prefetch_remaining_blocks', 'Blocks of the image not yet on this host.', ['image'], perImage(i => i.prefetch?.blocksRemaining))
  gauge('vmthunder_image_prefetch_eta_seconds', 'Prefetch\'s estimate of the time to hold the whole image, at its measured rate.', ['image'], perImage(i => i.prefetch?.etaMs === null || i.prefetch?.etaMs === undefined ? null : i.prefetch.etaMs / 1000))
  gauge('vmthunder_image_prefetch_active', 'Prefetch mode of the image: 1 for the current mode.', ['image', 'mode'], () =>
    images().flatMap(i => i.prefetch === undefined ? [] : [[{ image: i.id, mode: String(i.prefetch.mode) }, 1]] as Array<[Record<'image' | 'mode', string>, number]>))
  totalCounter('vmthunder_image_prefetch_failed_batches_total', 'Prefetch batches that failed (retried later).', ['image'], perImage(i => i.prefetch?.failedBatches))
  gauge('vmthunder_peers', 'Connected peers.', [], () => [[{}, snapshot?.p2p.peers ?? 0]])
  gauge('vmthunder_banned_peers', 'Peers banned for a corrupt block or a protocol violation.', [], () => [[{}, snapshot?.p2p.banned?.length ?? 0]])
  gauge('vmthunder_instances', 'VM instances (copy-on-write overlays) on this host.', [], () => [[{}, snapshot?.instances ?? 0]])
  gauge('vmthunder_cache_bytes', 'Bytes all image caches hold on disk.', [], () => [[{}, sources.cacheBytes()]])
  const quota = sources.quotaBytes
  if (quota !== null) gauge('vmthunder_cache_quota_bytes', 'Disk quota for all caches (absent: none).', [], () => [[{}, quota]])
  totalCounter('vmthunder_errors_total', 'Errors and warnings the agent logged, by error class and component.', ['class', 'component', 'level'], () =>
    sources.errors.entries().map(e => [{ class: e.errorClass, component: e.component, level: e.level }, e.count]))
  // The process' own figures. Not prom-client's default collectors: some break the naming rules
  // (nodejs_active_handles_total is a gauge) and its event-loop monitor wakes the process every 10 ms.
  const startTimeS = Math.round(Date.now() / 1000 - process.uptime())
  totalCounter('process_cpu_seconds_total', 'User and system CPU time of the agent, seconds.', [], () => {
    const usage = process.cpuUsage()
    return [[{}, (usage.user + usage.system) / 1e6]]
  })
  gauge('process_resident_memory_bytes', 'Resident memory of the agent.', [], () => [[{}, process.memoryUsage.rss()]])
  gauge('process_start_time_seconds', 'Start time of the agent since the Unix epoch, seconds.', [], () => [[{}, startTimeS]])
  gauge('nodejs_heap_used_bytes', 'V8 heap in use.', [], () => [[{}, process.memoryUsage().heapUsed]])
  const readLatency = new Histogram<'image'>({
    name: 'vmthunder_image_read_duration_seconds',
    help: 'Time to answer one NBD read of the image (local hits and fetches alike).',
    labelNames: ['image'],
    buckets: READ_LATENCY_BUCKETS_S,
    registers: [registry]
  })

  // One scrape at a time: the collectors share the snapshot.
  let last: Promise<unknown> = Promise.resolve()
  const renderOnce = async (): Promise<string> => {
    snapshot = await sources.status()
    try {
      return await registry.metrics()
    } finally {
      snapshot = undefined
    }
  }
  return {
    registry,
    readLatency,
    render: async () => {
      const next = last.then(renderOnce, renderOnce)
      last = next.catch(() => {})
      return await next
    }
  }
}
