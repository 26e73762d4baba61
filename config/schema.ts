// The config file's schema: every field optional (defaults fill the rest, see ./defaults.ts), unknown fields
// refused, and every error names the field it is about.

import { z } from 'zod'

const byteCount = z.number().int().positive()
const duration = z.number().int().positive()

export const configFileSchema = z.object({
  /** Where manifests, caches, identity and metadata live. */
  dataDir: z.string().min(1),
  /** The JSON-RPC socket. */
  socket: z.string().min(1),
  /** Where instance overlays are created (default DATA_DIR/instances). */
  instancesDir: z.string().min(1),
  blockSizeBytes: z.number().int().refine(n => n >= 4096 && n <= 16 * 1024 * 1024 && (n & (n - 1)) === 0, 'must be a power of two from 4096 to 16777216'),
  nbd: z.object({
    /** Unix socket of the NBD server; qcow2 overlays store it, so keep it stable. */
    socket: z.string().min(1),
    /** Optional TCP listener, "HOST:PORT"; off (null) by default. */
    tcp: z.string().regex(/^[^\s:]+:\d{1,5}$|^\[[0-9a-fA-F:]+\]:\d{1,5}$/, 'must be HOST:PORT').nullable(),
    maxConnections: z.number().int().min(1).max(65536)
  }).partial().strict(),
  rpc: z.object({
    maxRequestBytes: byteCount.max(64 * 1024 * 1024),
    maxConnections: z.number().int().min(1).max(4096),
    maxBatchLength: z.number().int().min(1).max(10_000)
  }).partial().strict(),
  cache: z.object({
    fetchTimeoutMs: duration,
    /** Disk quota for all caches together; null: no quota. */
    quotaBytes: byteCount.nullable()
  }).partial().strict(),
  images: z.object({
    /** Directories image.register may export files from; nothing is allowed until the operator sets them. */
    allowedDirs: z.array(z.string().min(1).refine(p => p.startsWith('/'), 'must be an absolute path')).max(256)
  }).partial().strict(),
  p2p: z.object({
    enabled: z.boolean(),
    listen: z.array(z.string().min(1)).max(64),
    bootstrap: z.array(z.string().min(1)).max(1024),
    /** Origin public keys whose manifests are accepted (hex or peer id); this agent's own is always trusted. */
    trust: z.array(z.string().min(1)).max(1024),
    /** Pre-shared key file for a private network; null: open network. */
    psk: z.string().min(1).nullable(),
    /** 'plaintext' only on trusted networks: blocks are verified against the signed manifest either way. */
    encryption: z.enum(['noise', 'plaintext']),
    /**
     * Port of the data channel (blocks on a direct, sealed TCP connection beside libp2p, on the host of the first
     * TCP listen address); 0: any free port; null: none (blocks stay on the libp2p stream).
     */
    dataChannelPort: z.number().int().min(0).max(65535).nullable(),
    heartbeatMs: duration.min(50),
    manifestTimeoutMs: duration.min(100).max(3_600_000),
    parents: z.number().int().min(1).max(16),
    childLimit: z.number().int().min(0).max(1024),
    soleChildLimit: z.number().int().min(0).max(1024),
    /** Children of the images this agent originates: small, so the image server sends each block about once. */
    originChildLimit: z.number().int().min(1).max(1024),
    /** Connections dialled from peers' lists of connected agents (src/p2p/peer-exchange.ts); 0: none. */
    peerExchangeTarget: z.number().int().min(0).max(1024),
    /** Manifests of trusted origins' catalogs fetched ahead and held (src/p2p/catalog.ts); 0: none. */
    catalogManifests: z.number().int().min(0).max(1024),
    uploadLimitBytesPerSec: byteCount.nullable(),
    downloadLimitBytesPerSec: byteCount.nullable()
  }).partial().strict(),
  prefetch: z.object({
    enabled: z.boolean(),
    rateLimitBytesPerSec: byteCount.nullable(),
    idleLinkFraction: z.number().min(0).max(1),
    /** A VM's boot recording ends after its NBD connection has been quiet this long. */
    recordingQuietMs: z.number().int().min(50).max(3_600_000)
  }).partial().strict(),
  log: z.object({
    level: z.enum(['debug', 'info', 'warn', 'error', 'silent'])
  }).partial().strict(),
  metrics: z.object({
    /** Prometheus scrape address, "HOST:PORT" (GET /metrics); null (default): no metrics listener. */
    listen: z.string().regex(/^[^\s:]+:\d{1,5}$|^\[[0-9a-fA-F:]+\]:\d{1,5}$/, 'must be HOST:PORT').nullable()
  }).partial().strict()
}).partial().strict()

export type ConfigFile = z.infer<typeof configFileSchema>
