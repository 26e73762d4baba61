// Encoders and decoders of NBD negotiation messages. 64-bit fields are written from JS numbers (export sizes
// and offsets stay far below 2^53) as two 32-bit halves.

import {
  EXPORT_NAME_PADDING_BYTES, NBD_INFO_BLOCK_SIZE, NBD_INFO_EXPORT, NBD_REP_SERVER, NBDMAGIC_HI, NBDMAGIC_LO,
  IHAVEOPT_HI, IHAVEOPT_LO, OPTION_REPLY_MAGIC_HI, OPTION_REPLY_MAGIC_LO
} from './constants.js'

const TWO_32 = 4294967296

export function writeU64 (buf: Buffer, offset: number, value: number): void {
  buf.writeUInt32BE(Math.floor(value / TWO_32), offset)
  buf.writeUInt32BE(value >>> 0, offset + 4)
}

/** Reads a 64-bit unsigned field as a number; values above 2^53 lose precision but stay above any export size. */
export function readU64 (buf: Buffer, offset: number): number {
  return buf.readUInt32BE(offset) * TWO_32 + buf.readUInt32BE(offset + 4)
}

/** NBDMAGIC, IHAVEOPT, 16-bit handshake flags. */
export function encodeServerGreeting (handshakeFlags: number): Buffer {
  const buf = Buffer.alloc(18)
  buf.writeUInt32BE(NBDMAGIC_HI, 0)
  buf.writeUInt32BE(NBDMAGIC_LO, 4)
  buf.writeUInt32BE(IHAVEOPT_HI, 8)
  buf.writeUInt32BE(IHAVEOPT_LO, 12)
  buf.writeUInt16BE(handshakeFlags, 16)
  return buf
}

export function isIHaveOpt (buf: Buffer, offset: number): boolean {
  return buf.readUInt32BE(offset) === IHAVEOPT_HI && buf.readUInt32BE(offset + 4) === IHAVEOPT_LO
}

export function encodeOptionReply (option: number, replyType: number, data?: Uint8Array): Buffer {
  const dataBytes = data?.length ?? 0
  const buf = Buffer.allocUnsafe(20 + dataBytes)
  buf.writeUInt32BE(OPTION_REPLY_MAGIC_HI, 0)
  buf.writeUInt32BE(OPTION_REPLY_MAGIC_LO, 4)
  buf.writeUInt32BE(option >>> 0, 8)
  buf.writeUInt32BE(replyType >>> 0, 12)
  buf.writeUInt32BE(dataBytes, 16)
  if (data !== undefined) buf.set(data, 20)
  return buf
}

export function encodeErrorReply (option: number, replyType: number, message: string): Buffer {
  return encodeOptionReply(option, replyType, Buffer.from(message, 'utf8'))
}

/** NBD_REP_SERVER payload: name length, name, then an optional human-readable description. */
export function encodeServerEntry (option: number, name: string, description?: string): Buffer {
  const nameBytes = Buffer.from(name, 'utf8')
  const descBytes = Buffer.from(description ?? '', 'utf8')
  const data = Buffer.allocUnsafe(4 + nameBytes.length + descBytes.length)
  data.writeUInt32BE(nameBytes.length, 0)
  nameBytes.copy(data, 4)
  descBytes.copy(data, 4 + nameBytes.length)
  return encodeOptionReply(option, NBD_REP_SERVER, data)
}

export function encodeInfoExport (sizeBytes: number, transmissionFlags: number): Buffer {
  const data = Buffer.allocUnsafe(12)
  data.writeUInt16BE(NBD_INFO_EXPORT, 0)
  writeU64(data, 2, sizeBytes)
  data.writeUInt16BE(transmissionFlags, 10)
  return data
}

/** NBD_INFO_NAME / NBD_INFO_DESCRIPTION: the type, then the string with no length (it fills the reply). */
export function encodeInfoString (infoType: number, value: string): Buffer {
  const str = Buffer.from(value, 'utf8')
  const data = Buffer.allocUnsafe(2 + str.length)
  data.writeUInt16BE(infoType, 0)
  str.copy(data, 2)
  return data
}

export function encodeInfoBlockSize (minBytes: number, preferredBytes: number, maxPayloadBytes: number): Buffer {
  const data = Buffer.allocUnsafe(14)
  data.writeUInt16BE(NBD_INFO_BLOCK_SIZE, 0)
  data.writeUInt32BE(minBytes, 2)
  data.writeUInt32BE(preferredBytes, 6)
  data.writeUInt32BE(maxPayloadBytes, 10)
  return data
}

/** Reply to NBD_OPT_EXPORT_NAME: size, transmission flags, 124 zero bytes unless NO_ZEROES. */
export function encodeExportNameReply (sizeBytes: number, transmissionFlags: number, noZeroes: boolean): Buffer {
  const buf = Buffer.alloc(10 + (noZeroes ? 0 : EXPORT_NAME_PADDING_BYTES))
  writeU64(buf, 0, sizeBytes)
  buf.writeUInt16BE(transmissionFlags, 8)
  return buf
}

export interface InfoRequest {
  name: string
  infoTypes: number[]
}

/** NBD_OPT_INFO / NBD_OPT_GO data: u32 name length, name, u16 count, count x u16 info types. Null when malformed. */
export function decodeInfoRequest (data: Buffer): InfoRequest | null {
  if (data.length < 6) return null
  const nameBytes = data.readUInt32BE(0)
  if (nameBytes > data.length - 6) return null
  const count = data.readUInt16BE(4 + nameBytes)
  if (data.length !== 4 + nameBytes + 2 + 2 * count) return null
  const infoTypes: number[] = []
  for (let i = 0; i < count; i++) infoTypes.push(data.readUInt16BE(4 + nameBytes + 2 + 2 * i))
  return { name: data.toString('utf8', 4, 4 + nameBytes), infoTypes }
}
