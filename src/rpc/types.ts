// The shapes of the daemon's JSON-RPC results, one definition for the methods, the CLI, the metrics and the
// README. Fields are added, never renamed (scripts rely on them). Byte counts are bytes, times milliseconds.

import type { CacheStats } from '../blockstack/cache.js'
import type { ImagePrefetchStatus } from '../daemon/prefetch-manager.js'
import type { RegistrationProgress } from '../blockstack/images.js'

export type { CacheStats, ImagePrefetchStatus, RegistrationProgress }

/**
 * image.register.status { id }: how far the registration of `id` is while image.register runs (on another
 * connection): phase 'hashing' (reading the file into the manifest) then 'copying' (into the cache), each
 * counting doneBytes of totalBytes (the file's size), and startedAtMs. null when no registration of `id` is
 * under way: not started yet, finished (image.register has answered), or failed.
 */
export type ImageRegisterStatus = RegistrationProgress | null

/** image.register, image.list: one image on this host. */
export interface ImageSummary {
  id: string
  sizeBytes: number
  blockSizeBytes: number
  /** Root of the signed manifest (hex). */
  root: string
  /** True on the agent that registered the image (its origin). */
  origin: boolean
  /** The origin's public key (hex). */
  originKey: string
  /** Where a hypervisor reads the image: nbd+unix:///ID?socket=PATH. */
  nbd: string
  heldFraction: number
  presentBytes: number
  /** Holds every block: serves the whole image to peers. */
  seed: boolean
  /** Names of this host's instances on the image. */
  instances: string[]
  cache: CacheStats
}

/** What the peer layer adds to an image in node.status (absent with p2p off). */
export interface ImagePeerFields {
  /** Hops from a seed; 0 on a seed, null while this agent has no parent. */
  depth?: number | null
  /** Peer ids this agent fetches the image from. */
  parents?: string[]
  /** Peer ids this agent serves the image to. */
  children?: string[]
  bytesSent?: number
  bytesReceived?: number
  /** Bytes of this image received from each peer (peer id -> bytes) since start. */
  bytesReceivedByPeer?: Record<string, number>
  /** Peers that advertise the image. */
  candidates?: number
  profileVersion?: string | null
  profilesFetched?: number
}

/** One image in node.status. */
export interface ImageStatus extends ImageSummary, ImagePeerFields {
  prefetch?: ImagePrefetchStatus
}

export interface P2PStatusFields {
  enabled: boolean
  peerId?: string
  publicKeyHex?: string
  listenAddrs?: string[]
  /** How many peers are connected. */
  peers?: number
  /** Peers banned for sending a corrupt block or breaking the protocol. */
  banned?: string[]
  /** Block requests to peers since start: sent, hedged, cancelled (a hedge's loser), failed over, and blocks that arrived twice. */
  blockRequests?: { requests: number, hedges: number, cancelled: number, failovers: number, duplicateBlocks: number, waits: number, wakeups: number, lastResortBytes: number }
  /** Data channels: the listener's port (null: none), links to peers that use one, connections this agent serves. */
  dataChannels?: { port: number | null, outbound: number, inbound: number }
  /** Peer exchange: lists asked for and served, peers dialled from them and connected, failures. */
  peerExchange?: { asked: number, served: number, dialled: number, connectedByExchange: number, failed: number }
  /** Manifests found for creates: advertised, asked directly, fetched ahead from a catalog. */
  manifestsFound?: { advertised: number, direct: number, catalog: number }
  /** The image catalog: origins' catalogs received (others' ignored), manifests fetched ahead, failed, held now, used by a create. */
  catalog?: { received: number, ignored: number, fetched: number, failed: number, held: number, used: number }
}

/** node.status. */
export interface NodeStatus {
  peerId: string
  publicKey: string
  version: string
  uptimeMs: number
  socket: string
  nbdSocket: string
  dataDir: string
  p2p: P2PStatusFields
  listenAddrs: string[]
  instances: number
  images: Record<string, ImageStatus>
  /** Cache disk use across images, and the quota (null: none). Absent on daemons older than this field. */
  cacheBytes?: number
  cacheQuotaBytes?: number | null
  /** Preheat requests this agent has seen and is working on. */
  preheat?: PreheatStatus[]
}

/** instance.create. */
export interface InstanceCreated {
  name: string
  image: string
  /** The qcow2 overlay a VM boots from; its backing file is the image's NBD URI. */
  path: string
  backing: string
  createdAtMs: number
}

/** instance.list. */
export interface InstanceEntry extends InstanceCreated {
  overlayBytes: number
}

/** image.preheat: the request this agent signed and published. */
export interface PreheatRequest {
  imageId: string
  root: string
  /** Public key (hex) of the agent that signed the request. */
  signer: string
  issuedAtMs: number
  /** Agents the request was published to (gossip subscribers when sent). */
  subscribers: number
}

/** One agent's progress on a preheated image, as it reports it over the preheat topic. */
export interface PreheatStatus {
  imageId: string
  root: string
  /** Queued, fetching the manifest, pulling, done, failed (reason in `error`), or refused: untrusted signer. */
  state: 'queued' | 'manifest' | 'pulling' | 'done' | 'failed' | 'refused'
  heldFraction: number
  error?: string
}

/** image.preheat.status: the cluster's progress from the agents' reports. */
export interface PreheatClusterStatus {
  imageId: string
  root: string | null
  /** Agents heard from (this one included), with their held fraction. */
  agents: Array<{ peerId: string, state: PreheatStatus['state'], heldFraction: number, reportedAtMs: number }>
  /** Mean held fraction over the agents heard from. */
  heldFraction: number
  sizeBytes: number | null
}
