// Fixed newstyle negotiation (proto.md "Fixed newstyle negotiation", INFO extension): greet, read the client
// flags, then answer options until NBD_OPT_GO / NBD_OPT_EXPORT_NAME picks an export or the client aborts.
// Input is read through a bounded buffer; any protocol violation, oversized option or truncated input throws,
// and the caller drops just that connection.

import type { Socket } from 'node:net'
import type { ExportProvider, NbdExport } from '../types.js'
import { ByteQueue } from './byte-queue.js'
import {
  decodeInfoRequest, encodeErrorReply, encodeExportNameReply, encodeInfoBlockSize, encodeInfoExport,
  encodeInfoString, encodeOptionReply, encodeServerEntry, encodeServerGreeting, isIHaveOpt
} from './codec.js'
import {
  BLOCK_SIZE_MIN_BYTES, HANDSHAKE_BUFFER_MAX_BYTES, KNOWN_CLIENT_FLAGS, MAX_STRING_BYTES,
  NBD_FLAG_C_NO_ZEROES, NBD_FLAG_FIXED_NEWSTYLE, NBD_FLAG_NO_ZEROES, NBD_INFO_DESCRIPTION, NBD_INFO_NAME,
  NBD_OPT_ABORT, NBD_OPT_EXPORT_NAME, NBD_OPT_GO, NBD_OPT_INFO, NBD_OPT_LIST, NBD_REP_ACK, NBD_REP_ERR_INVALID,
  NBD_REP_ERR_UNKNOWN, NBD_REP_ERR_UNSUP, NBD_REP_INFO
} from './constants.js'
import {
  NbdNegotiationTruncatedError, NbdOptionTooLargeError, NbdProtocolError, NbdUnknownExportError
} from './errors.js'
import type { NbdLogger } from './logger.js'

export interface NegotiationConfig {
  provider: ExportProvider
  transmissionFlags: number
  maxOptionBytes: number
  maxOptions: number
  preferredBlockBytes: number
  maxPayloadBytes: number
  logger: NbdLogger
}

export type NegotiationResult =
  | { kind: 'transmission', export: NbdExport, clientFlags: number, option: 'go' | 'export-name' }
  | { kind: 'aborted' }

/** Looks an export up; "" means the default export: the only one, when the provider has exactly one. */
export function resolveExport (provider: ExportProvider, name: string): NbdExport | undefined {
  const found = provider.get(name)
  if (found !== undefined || name !== '') return found
  const names = provider.list()
  return names.length === 1 ? provider.get(names[0]) : undefined
}

/**
 * Runs negotiation on `socket`. Bytes received past the end of negotiation stay in `queue` for the
 * transmission phase. `signal` (timeout, server close) rejects it with the signal's reason.
 */
export async function negotiate (
  socket: Socket, queue: ByteQueue, config: NegotiationConfig, signal: AbortSignal
): Promise<NegotiationResult> {
  const input = new NegotiationInput(socket, queue, signal)
  try {
    return await runNegotiation(input, config)
  } finally {
    input.detach()
  }
}

async function runNegotiation (input: NegotiationInput, config: NegotiationConfig): Promise<NegotiationResult> {
  await input.write(encodeServerGreeting(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES))
  const clientFlags = (await input.read(4)).readUInt32BE(0)
  if ((clientFlags & ~KNOWN_CLIENT_FLAGS) !== 0) {
    throw new NbdProtocolError(`unknown client flags 0x${clientFlags.toString(16)}`)
  }
  // A client without NBD_FLAG_C_FIXED_NEWSTYLE is still answered in fixed newstyle (proto.md allows it).
  const noZeroes = (clientFlags & NBD_FLAG_C_NO_ZEROES) !== 0

  for (let count = 0; count < config.maxOptions; count++) {
    const header = await input.read(16)
    if (!isIHaveOpt(header, 0)) throw new NbdProtocolError('option without IHAVEOPT magic')
    const option = header.readUInt32BE(8)
    const dataBytes = header.readUInt32BE(12)
    if (dataBytes > config.maxOptionBytes) {
      throw new NbdOptionTooLargeError(`option ${option} declares ${dataBytes} bytes, over ${config.maxOptionBytes}`, dataBytes)
    }
    const data = dataBytes === 0 ? Buffer.alloc(0) : await input.read(dataBytes)

    switch (option) {
      case NBD_OPT_EXPORT_NAME: {
        const name = data.toString('utf8')
        const exp = resolveExport(config.provider, name)
        // No error reply exists for EXPORT_NAME: the spec says to terminate the session.
        if (exp === undefined) throw new NbdUnknownExportError(`unknown export ${JSON.stringify(name)}`, name)
        await input.write(encodeExportNameReply(exp.sizeBytes, config.transmissionFlags, noZeroes))
        return { kind: 'transmission', export: exp, clientFlags, option: 'export-name' }
      }
      case NBD_OPT_ABORT:
        await input.write(encodeOptionReply(option, NBD_REP_ACK))
        return { kind: 'aborted' }
      case NBD_OPT_LIST:
        if (dataBytes !== 0) {
          await input.write(encodeErrorReply(option, NBD_REP_ERR_INVALID, 'NBD_OPT_LIST takes no data'))
          break
        }
        for (const name of config.provider.list()) {
          const description = config.provider.get(name)?.description
          await input.write(encodeServerEntry(option, name, description === undefined ? undefined : truncate(description)))
        }
        await input.write(encodeOptionReply(option, NBD_REP_ACK))
        break
      case NBD_OPT_INFO:
      case NBD_OPT_GO: {
        const exp = await answerInfo(input, config, option, data)
        if (exp !== undefined && option === NBD_OPT_GO) {
          return { kind: 'transmission', export: exp, clientFlags, option: 'go' }
        }
        break
      }
      default:
        // STARTTLS, STRUCTURED_REPLY, meta contexts, extended headers and anything newer: not spoken here.
        await input.write(encodeErrorReply(option, NBD_REP_ERR_UNSUP, 'option not supported'))
    }
  }
  throw new NbdProtocolError(`more than ${config.maxOptions} options in one negotiation`)
}

/** Answers NBD_OPT_INFO / NBD_OPT_GO; returns the export when the reply was a success. */
async function answerInfo (
  input: NegotiationInput, config: NegotiationConfig, option: number, data: Buffer
): Promise<NbdExport | undefined> {
  const request = decodeInfoRequest(data)
  if (request === null) {
    await input.write(encodeErrorReply(option, NBD_REP_ERR_INVALID, 'malformed info request'))
    return undefined
  }
  const exp = resolveExport(config.provider, request.name)
  if (exp === undefined) {
    await input.write(encodeErrorReply(option, NBD_REP_ERR_UNKNOWN, `unknown export ${truncate(request.name)}`))
    return undefined
  }
  const replies: Buffer[] = [encodeOptionReply(option, NBD_REP_INFO, encodeInfoExport(exp.sizeBytes, config.transmissionFlags))]
  if (request.infoTypes.includes(NBD_INFO_NAME)) {
    replies.push(encodeOptionReply(option, NBD_REP_INFO, encodeInfoString(NBD_INFO_NAME, exp.name)))
  }
  if (request.infoTypes.includes(NBD_INFO_DESCRIPTION) && exp.description !== undefined) {
    replies.push(encodeOptionReply(option, NBD_REP_INFO, encodeInfoString(NBD_INFO_DESCRIPTION, truncate(exp.description))))
  }
  // Sent even when not asked (as qemu-nbd does): minimum 1 means any alignment works, so no client is hurt.
  replies.push(encodeOptionReply(option, NBD_REP_INFO,
    encodeInfoBlockSize(BLOCK_SIZE_MIN_BYTES, config.preferredBlockBytes, config.maxPayloadBytes)))
  replies.push(encodeOptionReply(option, NBD_REP_ACK))
  await input.write(Buffer.concat(replies))
  return exp
}

/** NBD strings are at most 4096 bytes. */
function truncate (value: string): string {
  const bytes = Buffer.from(value, 'utf8')
  return bytes.length <= MAX_STRING_BYTES ? value : bytes.subarray(0, MAX_STRING_BYTES).toString('utf8').replace(/\uFFFD$/, '')
}

/** Reads exact byte counts from the socket during negotiation, with bounded buffering. */
class NegotiationInput {
  private waiter: (() => void) | undefined
  private endError: Error | undefined

  constructor (private readonly socket: Socket, private readonly queue: ByteQueue, private readonly signal: AbortSignal) {
    socket.on('data', this.onData)
    socket.on('end', this.onEnd)
    socket.on('close', this.onEnd)
    signal.addEventListener('abort', this.onAbort)
  }

  private readonly onData = (chunk: Buffer): void => {
    this.queue.push(chunk)
    if (this.queue.length > HANDSHAKE_BUFFER_MAX_BYTES) this.socket.pause()
    this.wake()
  }

  private readonly onEnd = (): void => {
    this.endError ??= new NbdNegotiationTruncatedError('connection ended during negotiation')
    this.wake()
  }

  private readonly onAbort = (): void => { this.wake() }

  private wake (): void {
    const w = this.waiter
    this.waiter = undefined
    w?.()
  }

  async read (n: number): Promise<Buffer> {
    while (this.queue.length < n) {
      this.signal.throwIfAborted()
      if (this.endError !== undefined) throw this.endError
      this.socket.resume()
      await new Promise<void>(resolve => { this.waiter = resolve })
    }
    this.signal.throwIfAborted()
    return this.queue.take(n)
  }

  /** Writes, waiting for drain when the client is not reading its replies. */
  async write (buf: Buffer): Promise<void> {
    this.signal.throwIfAborted()
    if (this.socket.destroyed) throw this.endError ?? new NbdNegotiationTruncatedError('socket closed during negotiation')
    if (this.socket.write(buf) || this.socket.writableLength <= HANDSHAKE_BUFFER_MAX_BYTES) return
    await new Promise<void>((resolve) => {
      const done = (): void => {
        this.socket.off('drain', done)
        this.socket.off('close', done)
        this.signal.removeEventListener('abort', done)
        resolve()
      }
      this.socket.on('drain', done)
      this.socket.on('close', done)
      this.signal.addEventListener('abort', done)
    })
    this.signal.throwIfAborted()
  }

  detach (): void {
    this.socket.off('data', this.onData)
    this.socket.off('end', this.onEnd)
    this.socket.off('close', this.onEnd)
    this.signal.removeEventListener('abort', this.onAbort)
    this.socket.pause()
  }
}
