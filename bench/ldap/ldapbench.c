/*
 * ldapbench.c - the LDAP publisher's side of bench/ldap/run.
 *
 *   ldapbench ldif CONFIG OU SUFFIX ADD.LDIF MOD.LDIF
 *       From the store of CONFIG's state_dir, write the baseline: for every
 *       address in the publication queue, the same entry the publisher
 *       writes (objectClass, cn, sn, mail, userCertificate;binary,
 *       userSMIMECertificate, values built by the same functions) as an LDIF
 *       add under ou=OU,SUFFIX (ADD.LDIF, which makes ou=OU first), and
 *       as a modify replacing the two attributes (MOD.LDIF).
 *   ldapbench deliver CONFIG [BATCH]
 *       Deliver the queue to CONFIG's [ldap] directory with pub_ldap_deliver()
 *       (what kmsd's delivery thread runs, PUB_LDAP_BATCH entries a round
 *       unless BATCH says otherwise) until it is empty; prints
 *       "entries=N wall_s=S".
 *   ldapbench again CONFIG
 *       The running thread's case: in one process (one publisher, its DN
 *       cache warm from a first untimed round), queue every entry again and
 *       time the second delivery; prints "entries=N wall_s=S".
 *   ldapbench resync CONFIG
 *       Queue every entry again (kmsctl publish resync), for a rewrite round.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/x509.h>

#include "ca/ca.h"
#include "common/common.h"
#include "publish/publish.h"

static void
die(const char *what)
{
	fprintf(stderr, "ldapbench: %s: %s\n", what, kms_last_error());
	exit(1);
}

static double
now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static struct kms_config *
load(const char *path, struct kms_store **st)
{
	struct kms_config *cfg = NULL;
	char *db;

	if (kms_config_load(path, &cfg) != 0)
		die(path);
	if ((db = kms_path_join(cfg->kmsd.state_dir, KMS_STORE_FILE)) == NULL || kms_store_open(db, 0, st) != 0)
		die("store");
	free(db);
	return cfg;
}

static void
put_b64(FILE *f, const char *attr, const unsigned char *der, size_t len)
{
	char *b = kms_b64_encode(der, len);

	if (b == NULL)
		die("base64");
	fprintf(f, "%s:: %s\n", attr, b);
	free(b);
}

/* The values of one user's entry, as pub_ldap_put_user() builds them. */
static void
put_values(FILE *f, struct kms_store *st, STACK_OF(X509) *certs, X509 *ca_cert)
{
	unsigned char *der = NULL;
	int len;

	for (int i = 0; i < sk_X509_num(certs); i++) {
		der = NULL;
		if ((len = i2d_X509(sk_X509_value(certs, i), &der)) <= 0)
			die("i2d_X509");
		put_b64(f, "userCertificate;binary", der, (size_t)len);
		OPENSSL_free(der);
	}
	if (pub_smime_value(st, certs, ca_cert, &der, &len) != 0)
		die("userSMIMECertificate");
	put_b64(f, "userSMIMECertificate", der, (size_t)len);
	OPENSSL_free(der);
}

static int
cmd_ldif(const char *conf, const char *ou, const char *suffix, const char *addpath, const char *modpath)
{
	struct kms_store *st = NULL;
	struct kms_config *cfg = load(conf, &st);
	struct ca_pubq_item *items = NULL;
	struct ca *ca = NULL;
	size_t n = 0, users = 0;
	FILE *add = fopen(addpath, "w"), *mod = fopen(modpath, "w");

	if (add == NULL || mod == NULL)
		die("cannot write the LDIF files");
	if (ca_store_load(st, NULL, NULL, &ca) != 0)
		die("CA");
	if (ca_pubq_next(st, time(NULL), 1000000, &items, &n) != 0)
		die("queue");
	fprintf(add, "dn: ou=%s,%s\nchangetype: add\nobjectClass: organizationalUnit\nou: %s\n\n", ou, suffix, ou);
	for (size_t i = 0; i < n; i++) {
		X509 *sign = NULL, *enc = NULL;
		STACK_OF(X509) *certs = sk_X509_new_null();
		char *local;

		if (strcmp(items[i].kind, CA_PUBQ_USER) != 0)
			continue;
		if (certs == NULL || ca_store_current(st, items[i].key, time(NULL), &sign, &enc, NULL) != 0)
			die("certificates");
		/* The publisher's order: encryption first. */
		if (enc)
			sk_X509_push(certs, enc);
		if (sign)
			sk_X509_push(certs, sign);
		if ((local = strdup(items[i].key)) == NULL)
			die("memory");
		*strchr(local, '@') = '\0';
		fprintf(add, "dn: mail=%s,ou=%s,%s\nchangetype: add\nobjectClass: inetOrgPerson\ncn: %s\nsn: %s\nmail: %s\n",
		    items[i].key, ou, suffix, items[i].key, local, items[i].key);
		put_values(add, st, certs, ca->cert);
		fprintf(add, "\n");
		fprintf(mod, "dn: mail=%s,ou=%s,%s\nchangetype: modify\nreplace: userCertificate;binary\n",
		    items[i].key, ou, suffix);
		for (int j = 0; j < sk_X509_num(certs); j++) {
			unsigned char *der = NULL;
			int len = i2d_X509(sk_X509_value(certs, j), &der);

			put_b64(mod, "userCertificate;binary", der, (size_t)len);
			OPENSSL_free(der);
		}
		fprintf(mod, "-\nreplace: userSMIMECertificate\n");
		{
			unsigned char *der = NULL;
			int len;

			if (pub_smime_value(st, certs, ca->cert, &der, &len) != 0)
				die("userSMIMECertificate");
			put_b64(mod, "userSMIMECertificate", der, (size_t)len);
			OPENSSL_free(der);
		}
		fprintf(mod, "-\n\n");
		free(local);
		sk_X509_pop_free(certs, X509_free);
		users++;
	}
	if (fclose(add) != 0 || fclose(mod) != 0)
		die("writing the LDIF files");
	printf("users=%zu\n", users);
	ca_pubq_items_free(items, n);
	ca_free(ca);
	kms_store_close(st);
	kms_config_unref(cfg);
	return 0;
}

static int
cmd_deliver(const char *conf, size_t batch)
{
	struct kms_store *st = NULL;
	struct kms_config *cfg = load(conf, &st);
	struct pub_ldap *pl = NULL;
	struct ca_pubq_stats qs;
	size_t total = 0, done;
	double t0;

	if (pub_ldap_new(cfg, &pl) != 0)
		die("publisher");
	t0 = now_s();
	for (;;) {
		if (pub_ldap_deliver(pl, st, batch, &done) != 0)
			die("delivery");
		total += done;
		if (done == 0)
			break;
	}
	printf("entries=%zu wall_s=%.3f\n", total, now_s() - t0);
	if (ca_pubq_stats(st, &qs) != 0 || qs.length != 0)
		die("the queue is not empty");
	pub_ldap_free(pl);
	kms_store_close(st);
	kms_config_unref(cfg);
	return 0;
}

static double
deliver_all(struct pub_ldap *pl, struct kms_store *st, size_t *total)
{
	size_t done;
	double t0 = now_s();

	*total = 0;
	do {
		if (pub_ldap_deliver(pl, st, PUB_LDAP_BATCH, &done) != 0)
			die("delivery");
		*total += done;
	} while (done > 0);
	return now_s() - t0;
}

static int
cmd_again(const char *conf)
{
	struct kms_store *st = NULL;
	struct kms_config *cfg = load(conf, &st);
	struct pub_ldap *pl = NULL;
	size_t total;
	double secs;

	if (pub_ldap_new(cfg, &pl) != 0)
		die("publisher");
	if (ca_pubq_resync(st) != 0)
		die("resync");
	deliver_all(pl, st, &total);
	if (ca_pubq_resync(st) != 0)
		die("resync");
	secs = deliver_all(pl, st, &total);
	printf("entries=%zu wall_s=%.3f\n", total, secs);
	pub_ldap_free(pl);
	kms_store_close(st);
	kms_config_unref(cfg);
	return 0;
}

static int
cmd_resync(const char *conf)
{
	struct kms_store *st = NULL;
	struct kms_config *cfg = load(conf, &st);

	if (ca_pubq_resync(st) != 0)
		die("resync");
	kms_store_close(st);
	kms_config_unref(cfg);
	return 0;
}

int
main(int argc, char **argv)
{
	if (argc == 7 && strcmp(argv[1], "ldif") == 0)
		return cmd_ldif(argv[2], argv[3], argv[4], argv[5], argv[6]);
	if (argc == 3 && strcmp(argv[1], "deliver") == 0)
		return cmd_deliver(argv[2], PUB_LDAP_BATCH);
	if (argc == 4 && strcmp(argv[1], "deliver") == 0 && atoi(argv[3]) > 0)
		return cmd_deliver(argv[2], (size_t)atoi(argv[3]));
	if (argc == 3 && strcmp(argv[1], "again") == 0)
		return cmd_again(argv[2]);
	if (argc == 3 && strcmp(argv[1], "resync") == 0)
		return cmd_resync(argv[2]);
	fprintf(stderr, "usage: ldapbench ldif CONFIG OU SUFFIX ADD.LDIF MOD.LDIF | deliver CONFIG [BATCH] | again CONFIG | resync CONFIG\n");
	return 2;
}
