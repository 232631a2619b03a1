/**
 * Renders every HttpException as RFC 9457 problem details (`application/problem+json`), the way
 * this API chose. txonce stores a client error as this filter wrote it, so a replay is the same
 * problem, byte for byte.
 */
import { Catch, HttpException, type ArgumentsHost, type ExceptionFilter } from "@nestjs/common";
import { ProblemException } from "./charges.service.js";

@Catch(HttpException)
export class ProblemFilter implements ExceptionFilter {
  catch(exception: HttpException, host: ArgumentsHost) {
    const status = exception.getStatus();
    const response = exception.getResponse();
    const { title, detail } =
      typeof response === "object" && response !== null && "title" in response
        ? (response as { title: string; detail: string })
        : { title: exception.message, detail: exception.message };
    const type = exception instanceof ProblemException ? exception.type : "about:blank";
    const body = JSON.stringify({ type: `https://payments.example/problems/${type}`, title, status, detail });
    // Express `res` and Fastify `reply` both have status/code, header and send.
    const reply = host.switchToHttp().getResponse<{ status?(code: number): unknown; code?(code: number): unknown; header(n: string, v: string): unknown; send(b: string): unknown }>();
    if (reply.code) reply.code(status);
    else reply.status!(status);
    reply.header("content-type", "application/problem+json");
    reply.send(body);
  }
}
