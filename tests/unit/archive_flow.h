/*
 * archive_flow.h - the flow cases of the archive suite (archive_flow.c).
 */
#ifndef KMS_ARCHIVE_FLOW_H
#define KMS_ARCHIVE_FLOW_H

#include <check.h>

/* Add the "flows" test case (init, enrollment, recovery, rotation, requests) to s. */
void archive_flow_tcases(Suite *s);

#endif
