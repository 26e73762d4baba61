// Frames of the block protocol (/vmthunder/blocks/1). One long-lived stream per (client, server) pair carries
// many requests, each with an id, so a stream is opened once (about 1.4 ms) and reused. Every frame is one
// length-prefixed message (lpStream); integers big-endian.
//
// client -> server
//   GET     1 | reqId u32 | priority u8 (0 demand, 1 prefetch) | root 32 | count u16 | count x index u32
//   CANCEL  2 | reqId u32
//   ADMIT   3 | reqId u32 | root 32 | leave u8 [| parentCount u8 | flags u8]
//           (join or renew a child lease; leave = 1 ends it. parentCount: the parents the child has, counting
//           the one asked, 1..255 (a relay counts its sole children by it); flags bit 0 'attaching': the child
//           has neither a working parent nor a child, so a relay at its bound of sole children refusing it
//           (topology/admit.ts) costs nobody a path. Absent, as older agents send it: one parent, not attaching.)
//   PING    4 | reqId u32
//   CHANNEL 5 | reqId u32                             (asks for a data channel: data-channel.ts)
// server -> client
//   BLOCKS  0x81 | reqId u32 | final u8 | n u16 | n x (index u32 | status u8 | length u32) | the data of the
//           DATA entries, concatenated in order. A GET is answered by one or more BLOCKS frames, the last
//           with final = 1; every asked index appears exactly once.
//   ADMITTED 0x83 | reqId u32 | accepted u8 | childCount u16 | childLimit u16
//   PONG    0x84 | reqId u32
//   CHANNEL_OFFER 0x85 | reqId u32 | port u16 | token 16 | client key 32 | server key 32
//   ERROR   0x8f | reqId u32 | code u8 (see ErrorCode)
//
// The same frames travel on a data channel once one is up (sealed records instead of length prefixes); a
// CHANNEL there is refused (ERROR unsupported).

import { Uint8ArrayList } from 'uint8arraylist'
import { WireDecodeError } from './errors.js'

export const BLOCKS_PROTOCOL = '/vmthunder/blocks/1'
export const MAX_INDEXES_PER_GET = 256
/** ADMIT flags bit 0: the child has no working parent and no child (see the table above). */
export const ADMIT_FLAG_ATTACHING = 1
/** A request frame is small: bounded by the index list. */
export const MAX_REQUEST_FRAME_BYTES = 1 + 4 + 1 + 32 + 2 + MAX_INDEXES_PER_GET * 4

export enum FrameType {
  Get = 1,
  Cancel = 2,
  Admit = 3,
  Ping = 4,
  Channel = 5,
  Blocks = 0x81,
  Admitted = 0x83,
  Pong = 0x84,
  ChannelOffer = 0x85,
  Error = 0x8f
}

export enum BlockStatus {
  Data = 0,
  NotPresent = 1
}

export enum ErrorCode {
  /** Too many queued requests or bytes from this client. */
  Busy = 1,
  /** The server has no image with that root. */
  UnknownImage = 2,
  BadRequest = 3,
  /** The server offers no data channel (none configured, over its ticket bounds, or asked on a channel). */
  Unsupported = 4
}

/** A data channel's one-time ticket and each direction's AES-256-GCM key (data-channel.ts, sealed-channel.ts). */
export const CHANNEL_TOKEN_BYTES = 16
export const CHANNEL_KEY_BYTES = 32
const TOKEN_BYTES = CHANNEL_TOKEN_BYTES
const KEY_BYTES = CHANNEL_KEY_BYTES
const CHANNEL_OFFER_BYTES = 1 + 4 + 2 + TOKEN_BYTES + 2 * KEY_BYTES

export type Priority = 0 | 1
export const PRIORITY_DEMAND: Priority = 0
export const PRIORITY_PREFETCH: Priority = 1

export type ClientFrame =
  | { type: FrameType.Get, reqId: number, priority: Priority, root: Uint8Array, indexes: number[] }
  | { type: FrameType.Cancel, reqId: number }
  | { type: FrameType.Admit, reqId: number, root: Uint8Array, leave: boolean, parentCount?: number, attaching?: boolean }
  | { type: FrameType.Ping, reqId: number }
  | { type: FrameType.Channel, reqId: number }

export interface BlockEntry {
  index: number
  status: BlockStatus
  /** Present when status is Data. */
  data?: Uint8Array | Uint8ArrayList
}

export type ServerFrame =
  | { type: FrameType.Blocks, reqId: number, final: boolean, entries: BlockEntry[] }
  | { type: FrameType.Admitted, reqId: number, accepted: boolean, childCount: number, childLimit: number }
  | { type: FrameType.Pong, reqId: number }
  | { type: FrameType.ChannelOffer, reqId: number, port: number, token: Uint8Array, clientKey: Uint8Array, serverKey: Uint8Array }
  | { type: FrameType.Error, reqId: number, code: ErrorCode }

export function encodeClientFrame (frame: ClientFrame): Uint8Array {
  switch (frame.type) {
    case FrameType.Get: {
      if (frame.indexes.length > MAX_INDEXES_PER_GET) throw new RangeError(`at most ${MAX_INDEXES_PER_GET} blocks per request`)
      const out = Buffer.allocUnsafe(1 + 4 + 1 + 32 + 2 + frame.indexes.length * 4)
      let at = out.writeUInt8(frame.type, 0)
      at = out.writeUInt32BE(frame.reqId, at)
      at = out.writeUInt8(frame.priority, at)
      out.set(frame.root, at); at += 32
      at = out.writeUInt16BE(frame.indexes.length, at)
      for (const index of frame.indexes) at = out.writeUInt32BE(index, at)
      return out
    }
    case FrameType.Cancel:
    case FrameType.Ping:
    case FrameType.Channel: {
      const out = Buffer.allocUnsafe(5)
      out.writeUInt8(frame.type, 0)
      out.writeUInt32BE(frame.reqId, 1)
      return out
    }
    case FrameType.Admit: {
      const withCount = frame.parentCount !== undefined
      if (withCount && !(Number.isInteger(frame.parentCount) && frame.parentCount! >= 1 && frame.parentCount! <= 255)) {
        throw new RangeError(`ADMIT parentCount must be an integer in 1..255, got ${String(frame.parentCount)}`)
      }
      const out = Buffer.allocUnsafe(1 + 4 + 32 + 1 + (withCount ? 2 : 0))
      out.writeUInt8(frame.type, 0)
      out.writeUInt32BE(frame.reqId, 1)
      out.set(frame.root, 5)
      out.writeUInt8(frame.leave ? 1 : 0, 37)
      if (withCount) {
        out.writeUInt8(frame.parentCount!, 38)
        out.writeUInt8(frame.attaching === true ? ADMIT_FLAG_ATTACHING : 0, 39)
      }
      return out
    }
  }
}

function asBuffer (data: Uint8Array | Uint8ArrayList): Buffer {
  const bytes = data instanceof Uint8Array ? data : data.subarray()
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)
}

export function decodeClientFrame (data: Uint8Array | Uint8ArrayList): ClientFrame {
  const buf = asBuffer(data)
  const fail = (why: string): never => { throw new WireDecodeError(`bad request frame: ${why}`) }
  if (buf.length < 5) fail('truncated')
  const type = buf.readUInt8(0)
  const reqId = buf.readUInt32BE(1)
  switch (type) {
    case FrameType.Get: {
      if (buf.length < 40) fail('truncated GET')
      const priority = buf.readUInt8(5)
      if (priority > 1) fail('bad priority')
      const root = new Uint8Array(buf.subarray(6, 38))
      const count = buf.readUInt16BE(38)
      if (count === 0 || count > MAX_INDEXES_PER_GET) fail(`GET of ${count} blocks`)
      if (buf.length !== 40 + count * 4) fail('GET length does not match its count')
      const indexes: number[] = new Array(count)
      for (let i = 0; i < count; i++) indexes[i] = buf.readUInt32BE(40 + i * 4)
      return { type, reqId, priority: priority as Priority, root, indexes }
    }
    case FrameType.Cancel:
    case FrameType.Ping:
    case FrameType.Channel:
      if (buf.length !== 5) fail('bad length')
      return { type, reqId }
    case FrameType.Admit: {
      if (buf.length !== 38 && buf.length !== 40) fail('bad ADMIT length')
      const root = new Uint8Array(buf.subarray(5, 37))
      const leave = buf.readUInt8(37) === 1
      if (buf.length === 38) return { type, reqId, root, leave }
      const parentCount = buf.readUInt8(38)
      const flags = buf.readUInt8(39)
      if (parentCount === 0) fail('ADMIT of 0 parents')
      if ((flags & ~ADMIT_FLAG_ATTACHING) !== 0) fail(`unknown ADMIT flags ${flags}`)
      return { type, reqId, root, leave, parentCount, attaching: (flags & ADMIT_FLAG_ATTACHING) !== 0 }
    }
    default:
      return fail(`unknown type ${type}`)
  }
}

/** A BLOCKS frame as a list of parts (header, then each block's bytes): written without copying the data. */
export function encodeBlocksFrame (reqId: number, final: boolean, entries: readonly BlockEntry[]): Uint8ArrayList {
  const header = Buffer.allocUnsafe(1 + 4 + 1 + 2 + entries.length * 9)
  let at = header.writeUInt8(FrameType.Blocks, 0)
  at = header.writeUInt32BE(reqId, at)
  at = header.writeUInt8(final ? 1 : 0, at)
  at = header.writeUInt16BE(entries.length, at)
  const out = new Uint8ArrayList(header)
  for (const entry of entries) {
    at = header.writeUInt32BE(entry.index, at)
    at = header.writeUInt8(entry.status, at)
    const length = entry.data?.byteLength ?? 0
    at = header.writeUInt32BE(entry.status === BlockStatus.Data ? length : 0, at)
    if (entry.status === BlockStatus.Data && entry.data !== undefined) out.append(entry.data as Uint8Array<ArrayBuffer>)
  }
  return out
}

export function encodeServerFrame (frame: Exclude<ServerFrame, { type: FrameType.Blocks }>): Uint8Array {
  switch (frame.type) {
    case FrameType.Admitted: {
      const out = Buffer.allocUnsafe(10)
      out.writeUInt8(frame.type, 0)
      out.writeUInt32BE(frame.reqId, 1)
      out.writeUInt8(frame.accepted ? 1 : 0, 5)
      out.writeUInt16BE(Math.min(0xffff, frame.childCount), 6)
      out.writeUInt16BE(Math.min(0xffff, frame.childLimit), 8)
      return out
    }
    case FrameType.Pong: {
      const out = Buffer.allocUnsafe(5)
      out.writeUInt8(frame.type, 0)
      out.writeUInt32BE(frame.reqId, 1)
      return out
    }
    case FrameType.ChannelOffer: {
      const out = Buffer.allocUnsafe(CHANNEL_OFFER_BYTES)
      if (frame.token.byteLength !== TOKEN_BYTES || frame.clientKey.byteLength !== KEY_BYTES || frame.serverKey.byteLength !== KEY_BYTES) throw new RangeError('bad CHANNEL_OFFER field length')
      out.writeUInt8(frame.type, 0)
      out.writeUInt32BE(frame.reqId, 1)
      out.writeUInt16BE(frame.port, 5)
      out.set(frame.token, 7)
      out.set(frame.clientKey, 7 + TOKEN_BYTES)
      out.set(frame.serverKey, 7 + TOKEN_BYTES + KEY_BYTES)
      return out
    }
    case FrameType.Error: {
      const out = Buffer.allocUnsafe(6)
      out.writeUInt8(frame.type, 0)
      out.writeUInt32BE(frame.reqId, 1)
      out.writeUInt8(frame.code, 5)
      return out
    }
  }
}

/**
 * Decodes a server frame. Block data are views into `data` where it is contiguous (no copy); `maxBlockBytes`
 * bounds each block.
 */
export function decodeServerFrame (data: Uint8ArrayList | Uint8Array, maxBlockBytes: number): ServerFrame {
  const list = data instanceof Uint8Array ? new Uint8ArrayList(data) : data
  const fail = (why: string): never => { throw new WireDecodeError(`bad response frame: ${why}`) }
  if (list.byteLength < 5) fail('truncated')
  const type = list.get(0)
  const headStart = asBuffer(list.subarray(0, Math.min(list.byteLength, 8)))
  const reqId = headStart.readUInt32BE(1)
  switch (type) {
    case FrameType.Blocks: {
      if (list.byteLength < 8) fail('truncated BLOCKS')
      const final = headStart.readUInt8(5) === 1
      const n = headStart.readUInt16BE(6)
      const headerLength = 8 + n * 9
      if (list.byteLength < headerLength) fail('truncated BLOCKS header')
      const header = asBuffer(list.subarray(0, headerLength))
      const entries: BlockEntry[] = []
      let dataAt = headerLength
      for (let i = 0; i < n; i++) {
        const at = 8 + i * 9
        const index = header.readUInt32BE(at)
        const status = header.readUInt8(at + 4)
        const length = header.readUInt32BE(at + 5)
        if (status === BlockStatus.Data) {
          if (length > maxBlockBytes) fail(`block of ${length} bytes`)
          if (dataAt + length > list.byteLength) fail('block data truncated')
          entries.push({ index, status, data: list.subarray(dataAt, dataAt + length) })
          dataAt += length
        } else if (status === BlockStatus.NotPresent) {
          if (length !== 0) fail('length on a missing block')
          entries.push({ index, status })
        } else {
          fail(`unknown block status ${status}`)
        }
      }
      if (dataAt !== list.byteLength) fail('trailing bytes')
      return { type, reqId, final, entries }
    }
    case FrameType.Admitted: {
      if (list.byteLength !== 10) fail('bad ADMITTED length')
      const buf = asBuffer(list.subarray())
      return { type, reqId, accepted: buf.readUInt8(5) === 1, childCount: buf.readUInt16BE(6), childLimit: buf.readUInt16BE(8) }
    }
    case FrameType.Pong:
      if (list.byteLength !== 5) fail('bad PONG length')
      return { type, reqId }
    case FrameType.ChannelOffer: {
      if (list.byteLength !== CHANNEL_OFFER_BYTES) fail('bad CHANNEL_OFFER length')
      const buf = asBuffer(list.subarray())
      const port = buf.readUInt16BE(5)
      if (port === 0) fail('CHANNEL_OFFER of port 0')
      return {
        type,
        reqId,
        port,
        token: new Uint8Array(buf.subarray(7, 7 + TOKEN_BYTES)),
        clientKey: new Uint8Array(buf.subarray(7 + TOKEN_BYTES, 7 + TOKEN_BYTES + KEY_BYTES)),
        serverKey: new Uint8Array(buf.subarray(7 + TOKEN_BYTES + KEY_BYTES, CHANNEL_OFFER_BYTES))
      }
    }
    case FrameType.Error: {
      if (list.byteLength !== 6) fail('bad ERROR length')
      const code = list.get(5)
      if (code < 1 || code > 4) fail(`unknown error code ${code}`)
      return { type, reqId, code: code as ErrorCode }
    }
    default:
      return fail(`unknown type ${type}`)
  }
}
