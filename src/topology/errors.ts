// One error class per condition, each with a stable `name`.

/** A topology or scheduler parameter is out of range; `field` names it. */
export class TopologyParamsError extends Error {
  override name = 'TopologyParamsError'
  constructor (readonly field: string, message: string) { super(`${field}: ${message}`) }
}
