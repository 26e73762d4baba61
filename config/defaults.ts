// Defaults for every config field. Block size: the shared boot trace reads 16 KiB at the median and 128 KiB
// at p90; moving aligned 64 KiB blocks of its read set fetches 81 % useful bytes, 256 KiB only 56 % and 1 MiB
// 32 %. 64 KiB keeps over-fetch low and the manifest small (512 KiB of hashes for a 1 GiB image); throughput
// comes from batching many blocks per message, not from bigger blocks.

export interface Config {
  dataDir: string
  socket: string
  instancesDir: string
  blockSizeBytes: number
  nbd: { socket: string, tcp: string | null, maxConnections: number }
  rpc: { maxRequestBytes: number, maxConnections: number, maxBatchLength: number }
  cache: { fetchTimeoutMs: number, quotaBytes: number | null }
  /** image.register accepts only files under these directories (absolute, symlinks resolved); none by default. */
  images: { allowedDirs: string[] }
  p2p: {
    enabled: boolean
    listen: string[]
    bootstrap: string[]
    trust: string[]
    psk: string | null
    encryption: 'noise' | 'plaintext'
    dataChannelPort: number | null
    heartbeatMs: number
    /** instance.create of an image this host lacks fails (1040/1041, saying why) if no manifest comes in this long. */
    manifestTimeoutMs: number
    parents: number
    childLimit: number
    /** Children per image that have this agent as their only parent (src/topology/admit.ts); 0: no bound. */
    soleChildLimit: number
    originChildLimit: number
    /** Connections to dial up to from the agents that peers say they are connected to (0: dial only bootstrap peers). */
    peerExchangeTarget: number
    /** Manifests of trusted origins' images fetched ahead, so a first instance.create needs no round trip (0: none). */
    catalogManifests: number
    uploadLimitBytesPerSec: number | null
    downloadLimitBytesPerSec: number | null
  }
  prefetch: { enabled: boolean, rateLimitBytesPerSec: number | null, idleLinkFraction: number, recordingQuietMs: number }
  log: { level: 'debug' | 'info' | 'warn' | 'error' | 'silent' }
  /** Prometheus metrics over HTTP, "HOST:PORT"; null: off. */
  metrics: { listen: string | null }
}

export const DEFAULT_DATA_DIR = '/var/lib/vmthunder'
export const DEFAULT_RUN_DIR = '/run/vmthunder'

export function defaultConfig (): Config {
  return {
    dataDir: DEFAULT_DATA_DIR,
    socket: `${DEFAULT_RUN_DIR}/vmthunderd.sock`,
    instancesDir: `${DEFAULT_DATA_DIR}/instances`,
    blockSizeBytes: 64 * 1024,
    nbd: { socket: `${DEFAULT_RUN_DIR}/nbd.sock`, tcp: null, maxConnections: 256 },
    rpc: { maxRequestBytes: 1024 * 1024, maxConnections: 64, maxBatchLength: 100 },
    cache: { fetchTimeoutMs: 60_000, quotaBytes: null },
    images: { allowedDirs: [] },
    p2p: {
      enabled: true,
      listen: ['/ip4/0.0.0.0/tcp/7400'],
      bootstrap: [],
      trust: [],
      psk: null,
      encryption: 'noise',
      // Blocks between agents on a direct TCP connection sealed with AES-256-GCM, keys handed over the noise
      // session (src/p2p/data-channel.ts): 11-12 % less host agent CPU in the 8-host wave than on the libp2p
      // stream. Any free port by default; set one where a firewall sits between hosts (an unreachable channel
      // falls back to the libp2p stream).
      dataChannelPort: 0,
      heartbeatMs: 1000,
      manifestTimeoutMs: 30_000,
      parents: 3,
      childLimit: 8,
      // With slots alone the origin's only child took 4-6 children that had no other parent, and its one uplink
      // carried all their boots (src/topology/params.ts).
      soleChildLimit: 2,
      // One child per image at the origin: it sends each block about once and the agents relay the rest
      // (with 8, every agent attaches to the origin and it uploads N times the image).
      originChildLimit: 1,
      // A fresh agent knows only its bootstrap peers; asking them for theirs connects a small cluster fully before
      // its first boot wave (src/p2p/peer-exchange.ts).
      peerExchangeTarget: 16,
      // An origin announces its images; an agent that trusts it fetches a few manifests ahead (src/p2p/catalog.ts).
      catalogManifests: 16,
      uploadLimitBytesPerSec: null,
      downloadLimitBytesPerSec: null
    },
    prefetch: { enabled: true, rateLimitBytesPerSec: null, idleLinkFraction: 0.5, recordingQuietMs: 15_000 },
    log: { level: 'info' },
    // Off unless the operator picks an address: no port opens by surprise.
    metrics: { listen: null }
  }
}
